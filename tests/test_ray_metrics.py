"""The headline figures reach the Ray dashboard's metrics (Prometheus) endpoint as gauges. Runs in a subprocess
with its own Ray (the metrics export port is fixed when Ray starts)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.ray

SCRIPT = r'''
import socket, sys, time, urllib.request
sys.path.insert(0, sys.argv[1])
import ray
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
ray.init(num_cpus=1, include_dashboard=False, _metrics_export_port=port)
from cluster.tracking import Tracker
t = Tracker(sys.argv[2], "gauges", ray_metrics=True)
deadline = time.time() + 90
while time.time() < deadline:
    t.log_metrics({"reward/raw_mean": 0.42, "policy/version": 3.0, "not/a/headline": 1.0}, step=1)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        body = ""
    lines = [l for l in body.splitlines() if l.startswith("ray_medgrpo_")]
    if any(l.startswith("ray_medgrpo_reward_raw_mean") for l in lines) and \
            any(l.startswith("ray_medgrpo_policy_version") for l in lines):
        print("\n".join(lines))
        break
    time.sleep(2)
ray.shutdown()
'''


def test_headline_gauges_are_exported(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO), (tmp_path / "mlruns").as_uri()],
                         capture_output=True, text=True, timeout=180,
                         env={"MLFLOW_ALLOW_FILE_STORE": "true", "RAY_USAGE_STATS_ENABLED": "0",
                              "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"})
    lines = out.stdout.splitlines()
    assert any(l.startswith("ray_medgrpo_reward_raw_mean{") and l.endswith(" 0.42") for l in lines), out.stderr[-2000:]
    assert any(l.startswith("ray_medgrpo_policy_version{") and l.endswith(" 3.0") for l in lines)
    assert not any("not_a_headline" in l for l in lines)
