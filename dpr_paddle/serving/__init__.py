"""Using a retriever: the `Retriever` Python API (`api`) and its HTTP server (`http`)."""
