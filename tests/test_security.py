"""Security properties (issue 5, part 6), one test each: safe loading of learner checkpoints, no code execution or
shell on data (a static scan of the package), API keys kept out of logs, MLflow params and printed config, local
services bound to 127.0.0.1. Path confinement and non-root pods are tested where they live:
tests/test_reader.py::test_path_confinement and tests/test_manifests.py::test_pods_run_as_non_root_with_project_image.
"""
from __future__ import annotations

import ast
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Iterator, Optional

import pytest
import torch

from cluster.cli import build_parser, main as cli_main, mlflow_ui_command
from cluster.config import ConfigError, load_config, preset_path, to_flat_dict, to_yaml
from learner import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "learner", "rewards", "cluster", "data", "bench")
KEY_ENV = "MEDGRPO_TEST_SECRET_KEY"
SECRET = "sk-live-0123456789abcdefSECRET"


class _Payload:
    """What an attacker plants in a checkpoint: unpickling it calls ``open(marker, "w")``, creating the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"module": _Payload(marker), "optimizer_state_dict": {}}, path)


# ------------------------------------------------------------------------------------- learner checkpoints

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch():
    from learner.deepspeed_learner import build_policy_batch

    comps = [NS(response_ids=[40 + i, 41, 42 + i], logprobs=[-5.0] * 3) for i in range(3)]
    return build_policy_batch([NS(prompt_ids=list(range(10, 30)), mm_inputs=None, completions=comps,
                                  temperature=1.0)], [[1.0, -0.5, -0.5]])


def test_tampered_learner_checkpoint_is_refused_and_runs_nothing(tiny_model_dir, tmp_path):
    """A DeepSpeed state file replaced by a malicious pickle: load_checkpoint refuses it, naming the file and the
    global, and the payload never runs; the same payload does run under a plain torch.load (the test can fail)."""
    from learner.deepspeed_learner import DeepSpeedLearner

    cfg = load_config(None, ["learner.zero_stage=0", "learner.lr=1e-2", "learner.micro_batch_size=4"])
    saved_env = dict(os.environ)
    learner = DeepSpeedLearner(cfg, 0, 1, "127.0.0.1", _free_port(), model_path=str(tiny_model_dir))
    try:
        learner.setup()
    finally:  # the rank's RANK/MASTER_PORT must not leak into later tests or Ray workers
        os.environ.clear()
        os.environ.update(saved_env)
    learner.train_step(_batch())
    path = tmp_path / "ckpt"
    learner.save_checkpoint(path)
    version = learner.version
    state_file = path / "state" / "mp_rank_00_model_states.pt"
    assert state_file.is_file()
    genuine = tmp_path / "genuine.pt"
    shutil.copy(state_file, genuine)

    probe, marker = tmp_path / "probe.pt", tmp_path / "pwned"
    _plant(probe, tmp_path / "probe-ran")
    torch.load(probe, weights_only=False)  # the unsafe load DeepSpeed would do: the payload is live
    assert (tmp_path / "probe-ran").exists()

    _plant(state_file, marker)
    learner.train_step(_batch())
    with pytest.raises(ckpt.UnsafeCheckpointError, match=r"mp_rank_00_model_states\.pt: Unsupported global: "
                                                          r"GLOBAL (builtins|io)\.open"):
        learner.load_checkpoint(path)
    assert not marker.exists()
    shutil.copy(genuine, state_file)  # the genuine file still loads through the same safe path
    assert learner.load_checkpoint(path) == version and not marker.exists()


def test_allowlist_covers_what_deepspeed_writes_and_nothing_runs(tmp_path):
    """The three DeepSpeed types ZeRO 1/2/3 optimizer files hold round-trip through the safe load; a payload
    beside them is refused; a truncated file is a clear error naming it."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    good = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = {"optimizer_state_dict": {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum(2),
                                      "param_slice_mappings": [{"w": fragment_address(numel=6, start=2)}],
                                      "fp32": [torch.arange(6.0)]}}
    torch.save(state, good)
    back = ckpt.safe_torch_load(good)["optimizer_state_dict"]
    assert back["zero_stage"] is ZeroStageEnum.gradients and back["loss_scaler"].cur_scale == 1.0
    assert back["param_slice_mappings"][0]["w"] == fragment_address(numel=6, start=2)
    assert torch.equal(back["fp32"][0], torch.arange(6.0))

    bad, marker = tmp_path / "bad.pt", tmp_path / "pwned"
    state["optimizer_state_dict"]["extra"] = _Payload(marker)
    torch.save(state, bad)
    with pytest.raises(ckpt.UnsafeCheckpointError, match=r"bad\.pt: Unsupported global: GLOBAL (builtins|io)\.open"):
        ckpt.safe_torch_load(bad)
    assert not marker.exists()

    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match=r"cut\.pt: unreadable checkpoint file"):
        ckpt.safe_torch_load(cut)


def test_direct_torch_loads_are_forced_safe_during_a_checkpoint_load(tmp_path, monkeypatch):
    """DeepSpeed's ZeRO-3 weights-only path calls torch.load(weights_only=False) itself; inside
    ``weights_only_loads`` that call is refused too. Nesting keeps the allowlist (torch's own context would empty
    it on the inner exit), and the environment is restored afterwards."""
    from deepspeed.runtime.zero.config import ZeroStageEnum

    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a user forcing unsafe loads does not win here
    evil, marker, allowed = tmp_path / "evil.pt", tmp_path / "pwned", tmp_path / "allowed.pt"
    _plant(evil, marker)
    torch.save({"zero_stage": ZeroStageEnum(3)}, allowed)
    with ckpt.weights_only_loads():
        with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
            torch.load(evil, weights_only=False)
        ckpt.safe_torch_load(allowed)  # a nested allowlist context ...
        assert torch.load(allowed, weights_only=False)["zero_stage"] is ZeroStageEnum.weights  # ... left it intact
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert ZeroStageEnum not in torch.serialization.get_safe_globals()


def test_only_the_default_checkpoint_engine_is_accepted_and_made_safe():
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    engine = NS(checkpoint_engine=TorchCheckpointEngine(None), _config=None)
    ckpt.use_safe_checkpoint_engine(engine)
    safe = engine.checkpoint_engine
    assert isinstance(safe, TorchCheckpointEngine) and type(safe).load is not TorchCheckpointEngine.load
    ckpt.use_safe_checkpoint_engine(engine)
    assert engine.checkpoint_engine is safe  # idempotent
    with pytest.raises(ckpt.CheckpointError, match="has no safe load"):
        ckpt.use_safe_checkpoint_engine(NS(checkpoint_engine=object(), _config=None))


# ------------------------------------------------------------------------------- no eval/exec/shell/pickle

_CODE = {"eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec", "builtins.compile"}
_SHELL = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
_UNPICKLE = {f"{m}.{f}" for m in ("pickle", "_pickle", "cloudpickle", "dill", "marshal", "joblib", "shelve")
             for f in ("load", "loads", "Unpickler", "open")}
_YAML_SAFE = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin for every import (``import pickle as p``, ``from os import system``)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str) -> Optional[ast.AST]:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _const(node: Optional[ast.AST], value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str, filename: str = "<sample>") -> Iterator[str]:
    """Calls that run code from data, run a shell, or unpickle untrusted bytes (see the module docstring)."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn, at = _dotted(node.func, aliases), f"{filename}:{node.lineno}"
        if fn in _CODE:
            yield f"{at}: {fn}() runs code"
        if fn in _SHELL:
            yield f"{at}: {fn}() runs a shell"
        shell = _kw(node, "shell")
        if shell is not None and not _const(shell, False):
            yield f"{at}: {fn or 'a call'} with shell=..."
        if fn in _UNPICKLE:
            yield f"{at}: {fn}() unpickles"
        if fn == "torch.load" and not _const(_kw(node, "weights_only"), True):
            yield f"{at}: torch.load without weights_only=True"
        if fn in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader, aliases).rsplit(".", 1)[-1] not in _YAML_SAFE:
                yield f"{at}: {fn} without a safe Loader"
        if fn in ("yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"):
            yield f"{at}: {fn}()"
        for flag in ("trust_remote_code", "allow_pickle"):
            value = _kw(node, flag)
            if value is not None and not _const(value, False):
                yield f"{at}: {flag}=..."


_SAMPLE = '''
import os, pickle as pk, subprocess, torch, yaml
from os import system as run
from cloudpickle import loads
import marshal
eval(text); exec(code); compile(src, "f", "exec")
run("ls"); os.popen("ls"); subprocess.run(cmd, shell=True); subprocess.Popen(cmd, shell=flag)
pk.loads(blob); loads(blob); marshal.loads(blob)
torch.load(f); torch.load(f, weights_only=False)
yaml.load(s); yaml.load(s, Loader=yaml.Loader); yaml.unsafe_load(s)
AutoModel.from_pretrained(p, trust_remote_code=True)
# all fine:
re.compile("x"); model.eval(); torch.load(f, weights_only=True); yaml.load(s, Loader=yaml.SafeLoader)
subprocess.run(["ls"], shell=False); yaml.safe_load(s); AutoModel.from_pretrained(p, trust_remote_code=False)
'''


def test_the_scan_catches_every_unsafe_pattern():
    found = list(unsafe_calls(_SAMPLE))
    assert [f.split(": ", 1)[1] for f in found] == [
        "eval() runs code", "exec() runs code", "compile() runs code",
        "os.system() runs a shell", "os.popen() runs a shell", "subprocess.run with shell=...",
        "subprocess.Popen with shell=...",
        "pickle.loads() unpickles", "cloudpickle.loads() unpickles", "marshal.loads() unpickles",
        "torch.load without weights_only=True", "torch.load without weights_only=True",
        "yaml.load without a safe Loader", "yaml.load without a safe Loader", "yaml.unsafe_load()",
        "trust_remote_code=..."], found


def test_package_has_no_eval_exec_shell_or_unsafe_deserialisation():
    files = [f for pkg in PACKAGES for f in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 40  # the walk found the package, not an empty folder
    found = [hit for f in files for hit in unsafe_calls(f.read_text(encoding="utf-8"), str(f.relative_to(REPO)))]
    assert found == []


# ---------------------------------------------------------------------------------------------- API keys

def test_a_literal_key_field_is_refused_without_echoing_the_key():
    with pytest.raises(ConfigError) as e:
        load_config("cpu_demo", [f"reward.judge.api_key={SECRET}"])
    assert "reward.judge.api_key" in str(e.value) and SECRET not in str(e.value)


def test_a_key_pasted_where_the_env_var_name_goes_is_refused():
    with pytest.raises(ConfigError, match="reward.judge.api_key_env") as e:
        load_config("cpu_demo", [f"reward.judge.api_key_env={SECRET}"])
    assert SECRET not in str(e.value)


def test_the_key_stays_out_of_saved_config_printed_config_and_mlflow_params(tmp_path, monkeypatch, capsys):
    """The key lives only in the environment: the config (saved as config.yaml by the driver, printed by
    `medgrpo config`, flattened into MLflow params) holds the variable's name. A key-shaped value typed into any
    other field is masked in the printed config and in MLflow params and tags."""
    from mlflow.tracking import MlflowClient

    from cluster.tracking import Tracker

    monkeypatch.setenv(KEY_ENV, SECRET)
    cfg = load_config("cpu_demo", [f"reward.judge.api_key_env={KEY_ENV}", "reward.judge.backend=openai"])
    assert SECRET not in to_yaml(cfg)  # what the driver writes to run_dir/config.yaml
    assert cli_main(["config", "cpu_demo", f"reward.judge.api_key_env={KEY_ENV}"]) == 0
    printed = capsys.readouterr().out
    assert f"api_key_env: {KEY_ENV}" in printed and SECRET not in printed

    pasted = [f"reward.judge.api_key_env={KEY_ENV}", f"reward.judge.model=gpt-judge?key={SECRET}"]
    assert cli_main(["config", "cpu_demo", *pasted]) == 0
    printed = capsys.readouterr().out
    assert "model: gpt-judge?key=***" in printed and SECRET not in printed

    uri = (tmp_path / "mlruns").as_uri()
    tracker = Tracker(uri, "security", run_name="keys", ray_metrics=False)
    tracker.log_params(to_flat_dict(load_config("cpu_demo", pasted)))
    tracker.set_tag("note", f"judge at https://x/?k={SECRET}")
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.data.params["reward.judge.api_key_env"] == KEY_ENV
    assert run.data.params["reward.judge.model"] == "gpt-judge?key=***"
    assert not [k for k, v in {**run.data.params, **run.data.tags}.items() if SECRET in v]
    assert SECRET not in str(run.data)
    tracker.finish()


# ------------------------------------------------------------------------------------------ local binding

def test_local_ray_dashboard_binds_loopback(monkeypatch):
    """Every preset keeps the dashboard on 127.0.0.1, and connect_ray passes it to ray.init (captured here; a
    second real Ray in the test process is not possible beside the session one)."""
    import ray

    from cluster.driver import connect_ray

    for preset in sorted(p.stem for p in preset_path("cpu_demo").parent.glob("*.yaml")):
        assert load_config(preset).cluster.dashboard_host == "127.0.0.1", preset
    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MEDGRPO_DASHBOARD", raising=False)
    connect_ray(load_config("cpu_demo"))
    assert seen["dashboard_host"] == "127.0.0.1" and seen["include_dashboard"] is True
    assert "address" not in seen


def test_mlflow_ui_binds_loopback_unless_told(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "runs" / "exp"
    run_dir.mkdir(parents=True)
    store = (tmp_path / "runs" / "mlruns").resolve().as_uri()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls: list = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert cli_main(["mlflow-ui", str(run_dir)]) == 0  # no server: subprocess.run is captured
    (cmd, kw), = calls
    assert cmd == [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
                   "--port", "5000", "--workers", "1"]
    assert "shell" not in kw and kw["env"]["MLFLOW_ALLOW_FILE_STORE"] == "true"
    assert "warning" not in capsys.readouterr().err

    assert cli_main(["mlflow-ui", str(run_dir), "--host", "0.0.0.0", "--port", "6001", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "--host 0.0.0.0 --port 6001" in out.out and "no authentication" in out.err and len(calls) == 1

    (run_dir / "config.yaml").write_text(f"tracking:\n  mlflow_uri: {tmp_path / 'elsewhere'}\n")
    assert build_parser().parse_args(["mlflow-ui", str(run_dir)]).host == "127.0.0.1"
    assert cli_main(["mlflow-ui", str(run_dir), "--dry-run"]) == 0  # the run's own configured store
    assert f"--backend-store-uri {(tmp_path / 'elsewhere').as_uri()} --host 127.0.0.1" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="a server of its own"):
        mlflow_ui_command("http://tracking.example:5000")
