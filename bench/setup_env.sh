#!/usr/bin/env bash
# The benchmark environment of bench/peer_trl.py: a separate venv, .venv-bench, holding medgrpo (-e .) plus TRL and
# its Hugging Face companions. TRL is never a dependency of the package or of the test venv (.venv).
#   bash bench/setup_env.sh          -> creates or reuses .venv-bench, installs what is missing
# Idempotent: a stamp file records the pins; rerunning with the same pins does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-bench
PY=${PYTHON:-python3}
# TRL 1.16.0 runs on transformers 5.23.0 (the pin in pyproject.toml) and torch 2.14.1; checked by the import below.
PINS=(trl==1.16.0 accelerate==1.15.0 datasets==5.2.0)
STAMP=$VENV/.installed-$( (cat pyproject.toml; printf '%s\n' "${PINS[@]}"; echo v1) | sha256sum | cut -c1-16)

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
printf '*\n' > "$VENV/.gitignore"  # keep the venv out of `git status` (Python < 3.13 venv writes none)
if [ ! -f "$STAMP" ]; then
  echo "[setup_env.sh] installing into $VENV (first run: a few minutes)" >&2
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  # torch + torchvision first: on this machine kind they come from local wheels (a bare `torch` from PyPI pulls a
  # multi-GB CUDA build); medgrpo's own pins then keep pip from replacing them.
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install -q -e . "${PINS[@]}"
  "$VENV/bin/python" -c "import torch, transformers, trl, accelerate, datasets, cluster.config, rewards.task_scores; \
from trl import GRPOConfig, GRPOTrainer; print('trl', trl.__version__, 'transformers', transformers.__version__, \
'torch', torch.__version__)" || { echo "[setup_env.sh] install failed" >&2; exit 1; }
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
