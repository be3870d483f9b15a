"""Turning text into vectors with a trained tower: loading a tower and its backend (`towers`:
dygraph, Paddle Inference, ONNX Runtime via `onnx_backend`) and writing a corpus's embedding
shards, resumably (`writer`)."""
