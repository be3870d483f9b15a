"""Training a bi-encoder: the loop (`loop`), one step and its chunks (`step`), the exact gradient
cache (`grad_cache`, with `graph_reference_step` as its executable spec), the optimizer
(`optim`), ranks (`distributed`) and checkpoint state (`checkpoint`)."""
