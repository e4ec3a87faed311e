"""No config key is inert (issue 13 item 11): every leaf key of ``TrainConfig`` has an entry in
``cluster/config_effects.py`` naming the test that shows its effect, and the effect tests the table names here.

The table check is cheap (dataclass introspection + ``ast``: no test runs); the effect tests below drive a key
through ``load_config`` into the component that reads it and assert a different outcome."""
from __future__ import annotations

import ast
import dataclasses
import math
import os
import typing
from pathlib import Path

import pytest
import torch

from cluster.actor_set import ActorSet, restart_options, rollout_vllm_kwargs
from cluster.config import TrainConfig, load_config
from cluster.config_effects import EFFECTS, OWED
from common.timing import PhaseTimer
from tests.test_learner import _fresh, tiny_dir  # noqa: F401 - the tiny model fixture

REPO = Path(__file__).resolve().parent.parent

# The keys whose effect test was still owed when the table was made; OWED may only lose keys (a new key needs its
# effect test in EFFECTS).
OWED_AT_START = frozenset({
    "stages[].prompts_per_step", "data.prompts_per_step", "rollout.group_size",
    "rollout.max_refill_rounds", "rollout.gpu_memory_utilization", "rollout.tensor_parallel_size",
    "reward.judge.gpu_memory_utilization", "cluster.max_actor_restarts",
    "tracking.rollout_samples_per_step",
})


def leaf_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Dotted leaf keys of a config dataclass; a list of dataclasses contributes ``name[].field``."""
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        args = typing.get_args(t)
        if dataclasses.is_dataclass(t):
            out += leaf_keys(t, f"{prefix}{f.name}.")
        elif typing.get_origin(t) is list and args and dataclasses.is_dataclass(args[0]):
            out += leaf_keys(args[0], f"{prefix}{f.name}[].")
        else:
            out.append(prefix + f.name)
    return out


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name.startswith("test_")}


def test_every_config_key_has_an_effect_test():
    keys = set(leaf_keys())
    assert len(keys) > 100
    both = set(EFFECTS) & set(OWED)
    assert not both, f"keys both in EFFECTS and OWED: {sorted(both)}"
    missing = sorted(keys - set(EFFECTS) - set(OWED))
    assert not missing, (f"config keys without an effect test: {missing}; add a test that changes the key and sees "
                         f"a different behaviour, and its node id to cluster/config_effects.py EFFECTS")
    stale = sorted((set(EFFECTS) | set(OWED)) - keys)
    assert not stale, f"cluster/config_effects.py names keys that no longer exist: {stale}"
    grown = sorted(set(OWED) - OWED_AT_START)
    assert not grown, f"OWED may only shrink; write the effect test for {grown} instead"


def test_every_named_effect_test_exists():
    found: dict[Path, set[str]] = {}
    bad = []
    for key, node in EFFECTS.items():
        file, _, func = node.partition("::")
        path = REPO / file
        if not path.is_file():
            bad.append(f"{key}: no file {file}")
            continue
        if path not in found:
            found[path] = _test_functions(path)
        if func not in found[path]:
            bad.append(f"{key}: {file} has no test {func}")
    assert not bad, "\n".join(bad)


def test_owed_keys_name_a_reader_that_reads_them():
    """An owed key is read somewhere (else it is inert and must go): the named file mentions the field."""
    for key, why in OWED.items():
        file = why.split(":")[0].split(" ")[0]
        field_name = key.split(".")[-1]
        assert (REPO / file).is_file(), (key, file)
        assert field_name in (REPO / file).read_text(), (key, file)


# --------------------------------------------------------------------------------------------- effect tests
def test_learner_keys_shape_the_engine_config(monkeypatch):
    """zero_stage, micro_batch_size, max_grad_norm, bf16 -> DeepSpeed config; backend -> process group backend;
    lr and warmup_steps -> the learning-rate schedule; collective_timeout_s -> init_distributed's timeout."""
    import deepspeed

    from learner.deepspeed_learner import DeepSpeedLearner

    def ds(*o: str) -> DeepSpeedLearner:
        return DeepSpeedLearner(load_config(None, list(o)))

    base = ds().ds_config()
    changed = ds("learner.zero_stage=2", "learner.micro_batch_size=3", "learner.max_grad_norm=0.5",
                 "learner.bf16=true").ds_config()
    assert (base["zero_optimization"]["stage"], changed["zero_optimization"]["stage"]) == (0, 2)
    assert (base["train_micro_batch_size_per_gpu"], changed["train_micro_batch_size_per_gpu"]) == (8, 3)
    assert ds("learner.micro_batch_size=3")._microbatches(7) == [[0, 1, 2], [3, 4, 5], [6]]
    assert (base["gradient_clipping"], changed["gradient_clipping"]) == (1.0, 0.5)
    assert (base["bf16"]["enabled"], changed["bf16"]["enabled"]) == (False, True)
    assert ds("learner.backend=gloo")._backend() == "gloo" and ds("learner.backend=nccl")._backend() == "nccl"
    assert ds("learner.lr=0.1")._lr_for(0) == 0.1 and ds("learner.lr=0.2")._lr_for(0) == 0.2
    warm = ds("learner.lr=0.1", "learner.warmup_steps=4")
    assert [warm._lr_for(s) for s in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])

    seen = []
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kw: seen.append(kw["timeout"].total_seconds()))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    saved = dict(os.environ)  # _init_distributed writes the rank's variables (RANK, MASTER_PORT, ...)
    try:
        for t in ("300", "42"):
            ds(f"learner.collective_timeout_s={t}", "learner.backend=gloo")._init_distributed()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert seen == [300.0, 42.0]


def _checkpointing(model) -> bool:
    if hasattr(type(model), "is_activation_checkpointing"):  # transformers >= 5.2x name
        return bool(model.is_activation_checkpointing)
    return bool(model.is_gradient_checkpointing)


def test_model_keys_change_the_learners_model(tiny_dir):
    """attn_implementation, gradient_checkpointing and weight_decay reach the learner's model and optimizer."""
    plain = _fresh(tiny_dir, "learner.zero_stage=0")
    try:
        got = (plain.model.config._attn_implementation, _checkpointing(plain.model),
               sorted({g["weight_decay"] for g in plain.engine.optimizer.param_groups}))
    finally:
        plain.shutdown()
    assert got == ("sdpa", False, [0.0])
    other = _fresh(tiny_dir, "learner.zero_stage=0", "model.attn_implementation=eager",
                   "model.gradient_checkpointing=true", "learner.weight_decay=0.1")
    try:
        got = (other.model.config._attn_implementation, _checkpointing(other.model),
               sorted({g["weight_decay"] for g in other.engine.optimizer.param_groups}))
    finally:
        other.shutdown()
    assert got == ("eager", True, [0.0, 0.1])  # biases and norms keep no decay


def test_resource_keys_shape_the_placement_plan():
    from cluster.placement import plan

    base = plan(load_config(None, ["rollout.num_gpus=1", "learner.num_gpus=1"]))
    assert base["rollout"].strategy == "PACK" and len(base["rollout"].bundles) == 1
    assert base["learner"].bundles == [{"CPU": 1.0, "GPU": 1.0}] and base["reward"].bundles == [{"CPU": 1.0}]
    assert "judge" not in base
    other = plan(load_config(None, [
        "cluster.placement_strategy=SPREAD", "rollout.num_actors=2", "rollout.num_cpus=2", "rollout.num_gpus=0.5",
        "learner.num_ranks=3", "learner.num_cpus=4", "learner.num_gpus=2", "reward.num_workers=2",
        "reward.num_cpus=3", "reward.judge.backend=hf", "reward.judge.num_gpus=0.25"]))
    assert other["rollout"].strategy == "SPREAD" and other["reward"].strategy == "SPREAD"
    assert other["rollout"].bundles == [{"CPU": 2.0, "GPU": 0.5}] * 2
    assert other["learner"].bundles == [{"CPU": 4.0, "GPU": 2.0}] * 3
    assert other["reward"].bundles == [{"CPU": 3.0}] * 2
    assert other["judge"].bundles == [{"GPU": 0.25}]


def test_similarity_keys_reach_the_reward_scorers_model():
    from rewards.scoring import RewardScorer

    def sim(*o: str):
        return RewardScorer(load_config(None, list(o)).reward).similarity_model  # lazy: no model is loaded

    assert (sim().mapping, sim().model_name) == ("clip", "all-MiniLM-L6-v2")
    other = sim("reward.similarity_mapping=affine", "reward.similarity_model=all-mpnet-base-v2")
    assert (other.mapping, other.model_name) == ("affine", "all-mpnet-base-v2")


def _combine(cfg, samples, normalized, where):
    from rewards.assembly import combine

    r = cfg.reward  # the driver's call (cluster/driver.py)
    return combine(samples, normalized, where, judge_weight=r.caption_judge_weight, fallback=r.caption_fallback,
                   task_weights=r.task_weights, dvc_caption_weight=r.dvc_caption_weight)


def test_caption_weight_and_fallback_change_the_caption_reward():
    from rewards.assembly import JUDGE, SIMILARITY, SampleReward

    both = [SampleReward("S", "video_summary", "vs", {JUDGE: 1.0, SIMILARITY: 0.0})]
    where = [(0, JUDGE), (0, SIMILARITY)]
    assert _combine(load_config(), both, [1.0, 0.0], where).rewards == [0.5]
    assert _combine(load_config(None, ["reward.caption_judge_weight=0.8"]), both, [1.0, 0.0], where).rewards == [
        pytest.approx(0.8)]
    no_judge = [SampleReward("S", "video_summary", "vs", {JUDGE: None, SIMILARITY: 0.6})]
    assert _combine(load_config(), no_judge, [0.6], [(0, SIMILARITY)]).rewards == [0.6]
    dropped = _combine(load_config(None, ["reward.caption_fallback=drop"]), no_judge, [0.6], [(0, SIMILARITY)])
    assert math.isnan(dropped.rewards[0]) and dropped.counters["caption_reward_missing"] == 1


def test_reward_task_weights_scale_the_final_reward():
    from rewards.assembly import TASK, SampleReward

    s = [SampleReward("S", "tal", "tal", {TASK: 0.5})]
    assert _combine(load_config(), s, [0.5], [(0, TASK)]).rewards == [0.5]
    assert _combine(load_config(None, ["reward.task_weights={tal: 2.0}"]), s, [0.5], [(0, TASK)]).rewards == [1.0]


def test_clip_keys_change_the_policy_loss():
    """The learner passes learner.clip_low / clip_high to policy_loss: a ratio outside one range but inside the
    other gives a different loss and gradient."""
    from learner.losses import policy_loss

    lp = torch.tensor([[0.0, math.log(1.25)]], requires_grad=True)  # ratios 1 and 1.25 against old 0
    old, mask = torch.zeros(1, 2), torch.ones(1, 2)

    def loss(*o: str) -> tuple[float, float]:
        lc = load_config(None, list(o)).learner
        out, _ = policy_loss(lp, old, torch.tensor([1.0]), mask, clip_low=lc.clip_low, clip_high=lc.clip_high)
        (g,) = torch.autograd.grad(out, lp)
        return float(out.detach()), float(g[0, 1])

    assert loss() == pytest.approx((-(1 + 1.25) / 2, -1.25 / 2))  # default clip_high 0.3: 1.25 inside
    assert loss("learner.clip_high=0.2") == pytest.approx((-(1 + 1.2) / 2, 0.0))  # clipped: no gradient
    neg = torch.tensor([[math.log(0.7)]], requires_grad=True)  # ratio 0.7, negative advantage
    lows = []
    for o in (["learner.clip_low=0.2"], ["learner.clip_low=0.35", "learner.clip_high=0.4"]):
        lc = load_config(None, o).learner
        out, _ = policy_loss(neg, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), clip_low=lc.clip_low,
                             clip_high=lc.clip_high)
        lows.append(float(out.detach()))
    assert lows == pytest.approx([0.8, 0.7])  # max(-A·ρ, -A·clip(ρ)): 1-0.2 bites, 1-0.35 does not


def test_max_new_tokens_is_the_dr_grpo_normaliser():
    """With loss_agg seq-sum-max-len the learner divides by rollout.max_new_tokens (and the rollout caps its
    generations at it)."""
    from learner.losses import policy_loss

    lp = torch.zeros(1, 4, requires_grad=True)

    def loss(n: int) -> float:
        cfg = load_config(None, ["learner.loss_agg=seq-sum-max-len", f"rollout.max_new_tokens={n}"])
        out, _ = policy_loss(lp, torch.zeros(1, 4), torch.tensor([1.0]), torch.ones(1, 4), agg=cfg.learner.loss_agg,
                             max_len=cfg.rollout.max_new_tokens)
        return float(out.detach())

    assert loss(8) == pytest.approx(-4 / 8) and loss(16) == pytest.approx(-4 / 16)


def test_model_dtype_and_top_p_reach_the_hf_rollout_backend(tiny_dir):
    """model.dtype is the rollout model's dtype; rollout.top_p goes into its sampling configuration."""
    from actors.rollout_backends import HFBackend

    dtypes, top_ps = [], []
    for o in ([], ["model.dtype=bfloat16", "rollout.top_p=0.5"]):
        cfg = load_config(None, o)
        backend = HFBackend(tiny_dir, dtype=cfg.model.dtype)
        dtypes.append(next(backend.model.parameters()).dtype)
        gen = backend._gen_config(2, max_new_tokens=4, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p)
        top_ps.append(gen.top_p)
    assert dtypes == [torch.float32, torch.bfloat16] and top_ps == [1.0, 0.5]


def test_tracking_experiment_names_the_mlflow_experiment(tmp_path):
    from cluster.tracking import Tracker

    uri = (tmp_path / "mlruns").as_uri()
    names = []
    for o in ([], ["tracking.experiment=ablation"]):
        t = Tracker(uri, load_config(None, o).tracking.experiment, ray_metrics=False)
        names.append(t.client.get_experiment(t.experiment_id).name)
        t.finish()
    assert names == ["medgrpo", "ablation"]


def test_judge_max_concurrency_bounds_the_http_pool():
    from rewards.judge_backends import OpenAIBackend

    sizes = []
    for n in ("8", "3"):
        cfg = load_config(None, ["reward.judge.backend=openai", "reward.judge.model=m",
                                 "reward.judge.api_key_env=MEDGRPO_TEST_NO_SUCH_KEY", f"reward.judge.max_concurrency={n}"])
        b = OpenAIBackend(cfg.reward.judge)
        sizes.append(b._pool._max_workers)
        b.close()
    assert sizes == [8, 3]


def test_cluster_keys_reach_ray_init(monkeypatch):
    """cluster.num_cpus sizes a local Ray; cluster.address joins an existing cluster instead (ray.init captured, as in
    tests/test_security.py: a second real Ray beside the session one is not possible)."""
    import ray

    from cluster.driver import connect_ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for o in ([], ["cluster.num_cpus=3"], ["cluster.address=ray://head:10001"]):
        connect_ray(load_config(None, o))
    assert [c.get("num_cpus") for c in calls[:2]] == [None, 3] and "address" not in calls[1]
    assert calls[2]["address"] == "ray://head:10001" and "num_cpus" not in calls[2]


def _trainer(*overrides: str):
    """A driver ``Trainer`` without Ray or actors: only its config, for the methods under test."""
    from cluster.driver import Trainer

    t = Trainer.__new__(Trainer)
    t.cfg = load_config(None, list(overrides))
    return t


def test_driver_data_keys_shape_what_is_trained_and_evaluated(synth_dir):
    """data.train_files, eval_files, eval_max_samples and tasks as the driver loads them (Trainer._load_data)."""
    train, images, evals = synth_dir / "train.jsonl", synth_dir / "images_train.jsonl", synth_dir / "eval.jsonl"

    def load(*o: str):
        t = _trainer(f"data.train_files=[{train}]", f"data.eval_files=[{evals}]", "data.eval_max_samples=1000", *o)
        t._load_data()
        return t

    base = load()
    assert {i.qa_type for i in base.train_instances} and len(base.eval_instances) > 2
    both = load(f"data.train_files=[{train},{images}]")
    assert len(both.train_instances) > len(base.train_instances)
    assert len(load("data.eval_max_samples=2").eval_instances) == 2
    assert load("data.eval_files=[]").eval_instances == []
    tal = load("data.tasks=[tal]")
    assert {i.qa_type for i in tal.eval_instances} == {"tal"}
    assert {i.qa_type for i in tal.sampler.next_batch(8)} == {"tal"}


def test_log_checkpoints_copies_each_checkpoint_into_mlflow(tmp_path):
    logged: list[str] = []
    tracker = type("T", (), {"set_tag": lambda self, k, v: None,
                             "log_artifact": lambda self, p, a=None: logged.append(str(a)) or True})()
    ckpt = tmp_path / "checkpoints" / "ckpt-00000002"
    ckpt.mkdir(parents=True)
    for flag in ("false", "true"):
        t = _trainer(f"tracking.log_checkpoints={flag}")
        t.run_dir, t.tracker = tmp_path, tracker
        logged.clear()
        t._log_checkpoint(ckpt)
        assert ("checkpoints/ckpt-00000002" in logged) == (flag == "true")


def test_max_actor_restarts_reaches_every_light_actors_restart_options():
    """ActorSet creates every light actor with ``restart_options(cluster.max_actor_restarts)``."""
    def opts(*o: str) -> dict[str, dict[str, int]]:
        return restart_options(load_config(None, list(o)).cluster.max_actor_restarts)

    for n, retries in ((3, 1), (0, 0), (-1, -1)):  # -1: Ray restarts (and retries) without bound
        got = opts(f"cluster.max_actor_restarts={n}")
        assert {role: o["max_restarts"] for role, o in got.items()} == dict.fromkeys(
            ("normalizer", "curriculum", "judge", "reward", "rollout"), n)
        assert got["normalizer"]["max_task_retries"] == got["curriculum"]["max_task_retries"] == n
        assert got["reward"]["max_task_retries"] == retries and got["rollout"]["max_task_retries"] == 0
    assert opts() == opts("cluster.max_actor_restarts=3")  # the default


class _Loop:
    """The actors a driver ``Trainer`` calls in its loop, without Ray: rollouts of ``n`` completions per prompt
    (``ActorSet.submit_rollouts`` itself builds the call, so ``rollout.group_size`` is the config's), rewards that
    vary within a group or not (``varied``), an identity normalizer and a learner that records what it trains."""

    version = 0

    def __init__(self, cfg, varied: bool) -> None:
        self.cfg, self.varied = cfg, varied
        self.submitted: list[int] = []  # prompts per rollout submission
        self.trained: list[list[int]] = []  # group sizes per learner update
        self.sft: list[int] = []  # examples per SFT update
        self.learner = self

    submit_rollouts = ActorSet.submit_rollouts

    def _submit(self, method, prompts, n, **kw):
        from learner.experience import Completion, PromptGroup

        self.submitted.append(len(prompts))
        return prompts, [PromptGroup(p.uid, p.qa_type, p.data_source, [1], {}, [
            Completion([2], [0.0], "a", "stop") for _ in range(n)], 0, 1.0) for p in prompts]

    def collect_rollouts(self, pending, timeout):
        return pending[0], pending[1], []

    def score(self, groups, prompts, tau, timeout):
        from rewards.assembly import TASK, SampleReward

        return [[SampleReward(g.data_source, "tal", "tal", {TASK: float(i % 2) if self.varied else 0.5})
                 for i in range(g.group_size)] for g in groups]

    def normalize(self, keys, values, timeout, call_id=None):
        return values, {}

    def train_step(self, groups, adv):
        self.trained.append([g.group_size for g in groups])
        return {"loss": 0.0}

    def sft_step(self, examples):
        self.sft.append(len(examples))
        return {"loss": 0.0}

    def encode_sft(self, prompts, timeout):
        return list(prompts), []

    def push_weights(self, timeout):
        return 0

    def tau(self):
        return None

    def set_lr(self, lr):
        pass

    def reward_metrics(self):
        return {}

    def fault_metrics(self):
        return {}


def _loop_trainer(tmp_path, *overrides: str, varied: bool = True):
    """A bare ``Trainer`` over ``_Loop`` actors, a sampler of fresh synthetic prompts and a no-op tracker."""
    from collections import deque
    from types import SimpleNamespace

    t = _trainer("checkpoint_every=0", "eval_every=0", "tracking.progress_bar=false", "learner.kl_coef=0",
                 *overrides)
    t.actors = _Loop(t.cfg, varied)
    t.by_id = {}

    def next_batch(n: int):
        out = [SimpleNamespace(uid=f"p{len(t.by_id) + i}", qa_type="tal", data_source="S", question="q", answer="a")
               for i in range(n)]
        t.by_id.update({p.uid: p for p in out})
        return out

    t.sampler = SimpleNamespace(next_batch=next_batch, set_tasks=lambda tasks: None)
    t.tracker = SimpleNamespace(log_metrics=lambda m, step: None, finish=lambda *a: None)
    t.run_dir, t.timeout = tmp_path, 1.0
    t.global_step = t.stage_index = t.stage_step = t.weight_version = 0
    t._pushed, t._inflight, t._asleep, t._resume_pending, t._judge_wait_seen = [0], deque(), False, [], 0.0
    return t


def test_prompts_per_step_and_group_size_shape_each_step(tmp_path):
    """data.prompts_per_step is the prompts each step draws unless the stage sets its own; rollout.group_size is
    the completions generated (and trained) per prompt (the driver's loop, Trainer.run, over Ray-less actors)."""
    stages = "stages=[{name: s, kind: sft, steps: 1, prompts_per_step: 3}, {name: g, kind: grpo, steps: 2}]"
    a = _loop_trainer(tmp_path, stages, "data.prompts_per_step=2", "rollout.group_size=3")
    a.run()
    assert a.actors.sft == [3] and a.actors.submitted == [2, 2] and a.actors.trained == [[3, 3], [3, 3]]
    b = _loop_trainer(tmp_path, stages.replace(", prompts_per_step: 3", ""), "data.prompts_per_step=4",
                      "rollout.group_size=5")
    b.run()
    assert b.actors.sft == [4] and b.actors.submitted == [4, 4] and b.actors.trained == [[5] * 4, [5] * 4]


def test_max_refill_rounds_bounds_the_dynamic_sampling_refills(tmp_path):
    """Groups whose rewards are all equal are dropped and refilled with fresh prompts, at most
    rollout.max_refill_rounds times per step; every prompt drawn is accounted for."""
    for rounds in (0, 1, 2):
        t = _loop_trainer(tmp_path, "rollout.dynamic_sampling=true", f"rollout.max_refill_rounds={rounds}",
                          "data.prompts_per_step=2", varied=False)
        m = t.grpo_step(2, 0, PhaseTimer())
        assert t.actors.submitted == [2] + [2] * rounds and t.actors.trained == []
        assert m["accounting/prompts_in"] == 2 * (1 + rounds) == m["accounting/dropped/zero_variance"]
    full = _loop_trainer(tmp_path, "rollout.dynamic_sampling=true", "rollout.max_refill_rounds=2", varied=True)
    full.grpo_step(2, 0, PhaseTimer())
    assert full.actors.submitted == [2]  # a full batch needs no refill


def test_rollout_samples_per_step_bounds_the_logged_rollouts(tmp_path):
    """tracking.rollout_samples_per_step: rows each GRPO step writes to rollouts.jsonl (0: the file is not
    written)."""
    import json

    for n, rows in ((0, 0), (1, 1), (4, 3)):
        run = tmp_path / f"n{n}"
        run.mkdir()
        t = _loop_trainer(run, f"tracking.rollout_samples_per_step={n}", "data.prompts_per_step=3")
        t.grpo_step(3, 0, PhaseTimer())
        log = run / "rollouts.jsonl"
        got = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        assert len(got) == rows and all(r["step"] == 1 for r in got)


def test_vllm_engine_keys_reach_vllm_llm(monkeypatch, tiny_dir):
    """rollout.gpu_memory_utilization / tensor_parallel_size / enforce_eager (through the rollout actor's
    ``vllm_kwargs``) and reward.judge.gpu_memory_utilization (through the judge's backend) are the ``vllm.LLM``
    arguments (vLLM stubbed: this venv has none; tests/vllm_lane/ reads them back from a real engine's config)."""
    import sys
    from types import ModuleType, SimpleNamespace

    from actors.rollout import RolloutWorker
    from rewards.judge_backends import make_backend

    engines: list[dict] = []
    vllm = ModuleType("vllm")
    vllm.LLM = lambda **kw: engines.append(kw)
    vllm.SamplingParams = lambda **kw: kw
    platforms = ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(is_cpu=lambda: False)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    for o in ([], ["rollout.gpu_memory_utilization=0.8", "rollout.tensor_parallel_size=2",
                   "rollout.enforce_eager=true", "reward.judge.gpu_memory_utilization=0.15"]):
        cfg = load_config(None, ["reward.judge.backend=vllm", f"reward.judge.model={tiny_dir}", *o])
        RolloutWorker(str(tiny_dir), backend="vllm", vllm_kwargs=rollout_vllm_kwargs(cfg))
        make_backend(cfg.reward.judge)
    got = [(e["gpu_memory_utilization"], e.get("tensor_parallel_size"), e.get("enforce_eager")) for e in engines]
    # rollout, judge; defaults, then changed
    assert got == [(0.5, 1, False), (0.3, None, None), (0.8, 2, True), (0.15, None, None)]
