#!/usr/bin/env bash
# Build .venv-verl (git-ignored) for tests/verl_cpu/run_step.py: torch 2.13.0+cpu first (the local wheel),
# then the pinned closure with --no-deps (requirements.lock says why), then the project itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.venv-verl
if [ -f "$VENV/.installed" ]; then exit 0; fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q --no-deps -r tests/verl_cpu/requirements.lock
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/python" -c "import torch, vllm, verl, ray; print('torch', torch.__version__, 'vllm', vllm.__version__, 'verl', verl.__version__, 'ray', ray.__version__)"
touch "$VENV/.installed"
