"""Searching embedding shards: the shard format (`shards`), exact search (`exact`), hnswlib
graphs (`hnsw`), Milvus (`milvus`) and the factory that picks one from an IndexSpec and plans
its memory (`factory`)."""
