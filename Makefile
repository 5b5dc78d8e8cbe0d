# Two commands on a fresh machine:  `make run`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config.toml
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run serve status test test-fast bench-ingest setup clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Exactly this pin: a CPU wheel is on disk here, and on a GPU machine the same pin gets CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,postgres]'
	touch $@

setup: $(VENV)/.installed

# The main job: load the example corpus, then run the daemon on the examples (Ctrl-C stops it):
# it ingests bench/data/examples/feedback.jsonl, runs a retrain cycle, gates, and swaps the alias on a win.
run: setup
	$(VENV)/bin/ragloop -c $(CONFIG) corpus load bench/data/examples/corpus.jsonl
	$(VENV)/bin/ragloop -c $(CONFIG) run

# The reference RAG service (examples/rag_service.py) on what `make run` serves, beside the daemon: it follows
# every promotion and logs labelled retrievals to state/feedback/, which the daemon ingests.
serve: setup
	$(PY) examples/rag_service.py --manifest state/serving.json --log state/feedback/service.jsonl

status: setup
	$(VENV)/bin/ragloop -c $(CONFIG) status

test: setup
	$(PY) -m pytest

# Everything but the tests marked slow (training, crash and daemon runs): a quick check while working.
test-fast: setup
	$(PY) -m pytest -m "not slow"

bench-ingest: setup
	$(PY) -m bench.ingest --events 500000

clean:
	rm -rf $(VENV) state .pytest_cache
