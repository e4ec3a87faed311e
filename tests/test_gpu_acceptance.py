"""bench/gpu_acceptance.py runs end to end in its CPU smoke mode (tiny sizes, fp32, gloo) and every check it
makes on a GPU passes here: it is ready for the first GPU session (docs/gpu.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_acceptance_cpu_smoke(tmp_path):
    out = tmp_path / "acceptance.json"
    # its own process: a ZeRO-3 engine patches torch.nn.functional.linear process-wide
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_acceptance", "--cpu", "--max-new-tokens", "8",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["ok"] and rec["dtype"] == "float32"
    assert set(rec["checks"]) >= {"rollout_groups", "zero0_logprob_agreement", "zero3_logprob_agreement",
                                  "zero0_weights_changed", "zero3_frozen_tower_unchanged",
                                  "zero3_pack_apply_checksum", "broadcast_on_device"}
    assert rec["model"]["text_head_size"] == 64 and rec["model"]["vision_head_size"] == 80
    assert rec["rollout"]["generated_tokens"] > 0 and rec["zero0"]["broadcast_buckets"] >= 1
    import bench.gpu_acceptance as ga

    gpu = ga.GPU_SIZES  # the GPU sizes keep the real head sizes
    assert gpu["hidden_size"] // gpu["num_attention_heads"] == 64
    assert gpu["vision_hidden_size"] // gpu["vision_num_heads"] == 80
