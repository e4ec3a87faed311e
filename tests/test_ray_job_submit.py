"""`ray job submit` against a real `ray start --head` on this machine (token auth on, dashboard on 127.0.0.1):
the job runs SFT→GRPO with the project as the working dir and its metrics land in MLflow."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(temp: Path) -> None:
    """Stop only this cluster's processes (``ray stop`` would stop every Ray on the machine, the test session's
    own included): they are the ones whose command line names its temp dir."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(temp) in " ".join(p.info["cmdline"] or []):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()
    shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_training(synth_dir, tiny_model_dir, tmp_path):
    bindir = Path(sys.executable).parent
    ray_bin = bindir / "ray"
    if not ray_bin.exists():
        pytest.skip("ray CLI not in the venv")
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", RAY_AUTH_MODE="token",
               RAY_USAGE_STATS_ENABLED="0", MLFLOW_ALLOW_FILE_STORE="true", DS_ACCELERATOR="cpu")
    env.pop("RAY_ADDRESS", None)
    # every port of its own: the test session's local Ray already holds Ray's default agent ports
    gcs, dash, agent, agent_grpc, env_agent, metrics, client = (_free_port() for _ in range(7))
    temp = Path("/tmp") / f"rayjob-{os.getpid()}"  # short: Ray's socket paths must stay < 108 bytes
    start = subprocess.run([str(ray_bin), "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}",
                            "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}",
                            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                            f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
                            f"--ray-client-server-port={client}",
                            "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    mlruns = tmp_path / "mlruns"
    try:
        cmd = [str(ray_bin), "job", "submit", f"--address=http://127.0.0.1:{dash}", f"--working-dir={REPO}",
               "--", "python", "-m", "cluster.cli", "train", "cpu_demo",
               f"run_dir={tmp_path / 'run'}", f"model.path={tiny_model_dir}",
               f"data.train_files=[{synth_dir}/train.jsonl]", f"data.eval_files=[{synth_dir}/eval.jsonl]",
               "data.tasks=[tal,cvs_assessment]", "data.prompts_per_step=2", "data.max_frames=4",
               "rollout.group_size=2", "rollout.max_new_tokens=6", "reward.num_cpus=0", "learner.num_cpus=0",
               "tracking.progress_bar=false", f"tracking.mlflow_uri={mlruns.as_uri()}",
               "stages=[{name: sft, kind: sft, steps: 1}, {name: grpo, kind: grpo, steps: 2}]"]
        for _ in range(12):  # the head's job agent may need a few seconds after `ray start` on a busy machine
            job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(5)
        assert job.returncode == 0 and "succeeded" in job.stdout, (job.stdout[-3000:], job.stderr[-3000:])
    finally:
        _stop_cluster(temp)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlruns.as_uri())
    exp = client.get_experiment_by_name("medgrpo-cpu-demo")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert {"loss/sft", "accounting/prompts_in", "time/step_s"} <= set(runs[0].data.metrics)
