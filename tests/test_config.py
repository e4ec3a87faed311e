"""Config: presets load, overrides apply, and bad values fail at start-up naming the key and what is allowed."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cluster.config import PRESET_DIR, ConfigError, load_config, to_flat_dict, to_yaml

PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def test_all_presets_present():
    assert {"cpu_demo", "medgrpo_7b", "medloc_r1", "medvqa_drgrpo"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.stages and cfg.learner.clip_high >= cfg.learner.clip_low


def test_paper_hyperparameters_in_medgrpo_preset():
    cfg = load_config("medgrpo_7b")
    assert cfg.rollout.group_size == 8 and cfg.learner.lr == 5e-7
    assert (cfg.learner.clip_low, cfg.learner.clip_high, cfg.learner.kl_coef) == (0.2, 0.3, 0.0)
    assert cfg.stages[0].steps == 5000 and cfg.normalizer.k == 3.0


def test_overrides_apply_and_types_convert():
    cfg = load_config("cpu_demo", ["learner.lr=1e-6", "rollout.group_size=6", "data.tasks=[tal,stg]"])
    assert cfg.learner.lr == 1e-6 and cfg.rollout.group_size == 6 and cfg.data.tasks == ["tal", "stg"]


def test_unquoted_off_is_understood():
    assert load_config("cpu_demo", ["normalizer.mode=off"]).normalizer.mode == "off"


@pytest.mark.parametrize("override, needle", [
    (["learner.no_such_key=1"], "learner.no_such_key"),
    (["nonsense=1"], "nonsense"),
    (["learner.lr=fast"], "learner.lr"),
    (["rollout.group_size=2.5"], "rollout.group_size"),
    (["learner.advantage=ppo"], "allowed values: grpo, drgrpo, rloo"),
    (["learner.loss_agg=mean"], "token-mean, seq-mean-token-mean, seq-sum-max-len"),
    (["rollout.backend=sglang"], "rollout.backend"),
    (["learner.zero_stage=4"], "learner.zero_stage"),
    (["rollout.group_size=1"], "rollout.group_size=1 is out of range"),
    (["rollout.top_p=1.5"], "rollout.top_p"),
    (["normalizer.mode=static"], "normalizer.table_file is required"),
    (["learner.clip_low=0.3", "learner.clip_high=0.2"], "clip_high"),
    (["stages=[{kind: rl}]"], "stages[0].kind"),
    (["data.task_weights={tal: -1}"], "data.task_weights.tal"),
])
def test_bad_values_name_key_and_allowed(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("cpu_demo", override)
    assert needle in str(e.value)


def test_unknown_preset_lists_allowed():
    with pytest.raises(ConfigError, match="cpu_demo"):
        load_config("no_such_preset")


def test_yaml_round_trip_and_flat_params(tmp_path):
    cfg = load_config("medgrpo_7b")
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(str(path)) == cfg
    flat = to_flat_dict(cfg)
    assert flat["learner.lr"] == 5e-7 and flat["stages.0.steps"] == 5000
    assert not any("key" in k and "env" not in k for k in flat), "no secret-looking params"


def test_cli_config_prints_and_fails_cleanly():
    ok = subprocess.run([sys.executable, "-m", "cluster.cli", "config", "cpu_demo", "learner.lr=2e-6"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "lr: 2.0e-06" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "cluster.cli", "config", "cpu_demo", "learner.advantage=x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "learner.advantage" in bad.stderr and "Traceback" not in bad.stderr


def test_weight_path_key():
    assert load_config("cpu_demo").rollout.weight_path == "object_store"
    cfg = load_config("cpu_demo", ["rollout.backend=vllm", "rollout.weight_path=nccl"])
    assert cfg.rollout.weight_path == "nccl"
    with pytest.raises(ConfigError, match="weight_path='ipc' is not allowed; allowed values: object_store, nccl"):
        load_config("cpu_demo", ["rollout.weight_path=ipc"])
    with pytest.raises(ConfigError, match="weight_path=nccl needs rollout.backend=vllm"):
        load_config("cpu_demo", ["rollout.weight_path=nccl"])
    with pytest.raises(ConfigError, match="cluster.colocate"):
        load_config("cpu_demo", ["rollout.backend=vllm", "rollout.weight_path=nccl", "cluster.colocate=true"])


def test_kl_reference_and_lora_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"learner\.ref_model_path=.* only used with learner\.kl_coef > 0"):
        load_config(None, [f"learner.ref_model_path={tmp_path}"])
    with pytest.raises(ConfigError, match=r"learner\.ref_model_path=.*no such folder"):
        load_config(None, ["learner.kl_coef=0.1", f"learner.ref_model_path={tmp_path / 'nope'}"])
    assert load_config(None, ["learner.kl_coef=0.1", f"learner.ref_model_path={tmp_path}"]).learner.kl_coef == 0.1
    with pytest.raises(ConfigError, match=r"model\.lora_target_modules=\[\]"):
        load_config(None, ["model.lora_rank=8", "model.lora_target_modules=[]"])
    with pytest.raises(ConfigError, match=r"model\.lora_target_modules=.*module names"):
        load_config(None, ["model.lora_rank=8", "model.lora_target_modules=['q_proj;rm']"])
    with pytest.raises(ConfigError, match=r"model\.lora_rank > 0 with learner\.zero_stage=3 is not supported"):
        load_config(None, ["model.lora_rank=8", "learner.zero_stage=3"])
    with pytest.raises(ConfigError, match=r"model\.lora_rank > 0 with rollout\.weight_path=nccl"):
        load_config(None, ["model.lora_rank=8", "rollout.backend=vllm", "rollout.weight_path=nccl"])


def test_half_switches_are_refused_or_implied_at_start_up():
    """A key that only acts with another is implied by it or refused by load_config, naming both keys."""
    for overrides, both in (
            (["reward.length_mode=cwr"], ("reward.length_mode", "reward.length_weight")),
            (["reward.length_weight=0.5"], ("reward.length_weight", "reward.length_mode")),
            (["curriculum.enabled=true", "reward.iou_threshold_reward=false"],
             ("curriculum.enabled", "reward.iou_threshold_reward")),
            (["reward.iou_threshold_reward=true"], ("reward.iou_threshold_reward", "curriculum.enabled")),
            (["cluster.colocate=true"], ("cluster.colocate", "rollout.enable_sleep_mode")),
            (["cluster.colocate=true", "rollout.enable_sleep_mode=true", "rollout.max_staleness=1"],
             ("cluster.colocate", "rollout.max_staleness")),
            (["reward.semantic_alignment_weight=0.5"], ("reward.semantic_alignment_weight", "reward.judge.backend")),
            (["reward.recitation_coef=-0.5"], ("reward.recitation_coef", "data.knowledge_file"))):
        with pytest.raises(ConfigError) as e:
            load_config("cpu_demo", overrides)
        assert all(k in str(e.value) for k in both), (overrides, str(e.value))
    # the preset's own hint works when followed
    assert load_config("medvqa_drgrpo", ["reward.length_mode=cwr", "reward.length_weight=0.5"]).reward.length_weight == 0.5
    # the curriculum implies its thresholded reward; without it the reward stays plain IoU
    assert load_config("cpu_demo", ["curriculum.enabled=true"]).reward.iou_threshold_reward is True
    assert load_config("cpu_demo").reward.iou_threshold_reward is False
    assert load_config("medgrpo_7b", ["cluster.colocate=true", "rollout.num_gpus=0.5",
                                      "learner.num_gpus=0.5"]).cluster.colocate
    for preset in ("cpu_demo", "medgrpo_7b", "medloc_r1", "medvqa_drgrpo"):
        load_config(preset)
