"""Questions to ranked passages and their scores: the dense searcher (`dense`), BM25 (`bm25`) and
how it splits text per language (`analyzers`), fusion (`fusion`), the searcher that combines them
(`searcher`), answer matching and top-k accuracy (`evaluation`), relevance labels and their metrics
(`qrels`), the passage store (`passage_store`), top-k part files (`topk_file`), the batch run over a
QA file (`run`) and hard-negative mining (`mining`)."""
