"""The encoders: the bi-encoder and its losses (`model`), pooling and similarity recipes
(`pooling`), building a bi-encoder from directories and recording its config (`builder`),
named encoders and conversions (`pretrained`), tokenization (`tokenization`), and the CPU
training speed-ups (`fast_cpu`)."""
