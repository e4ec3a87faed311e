"""SFT on the synthetic data (same learner, prompt tokens masked): the loss falls and the model learns to emit the
task's answer format."""
from __future__ import annotations

from actors.rollout import RolloutWorker
from cluster.config import load_config
from data.reader import read_instances
from learner.deepspeed_learner import DeepSpeedLearner, build_sft_batch
from rewards.tasks import format_problem


def test_sft_lowers_loss_and_teaches_the_format(synth_dir, tiny_model_dir):
    insts = [i for i in read_instances(synth_dir / "train.jsonl").instances if i.qa_type == "cvs_assessment"]
    worker = RolloutWorker(str(tiny_model_dir), max_frames=2, max_pixels=56 * 56, min_pixels=28 * 28)
    examples = [e for e in worker.encode_sft(insts) if isinstance(e, dict)]
    assert len(examples) == len(insts) >= 4
    prompt_len = examples[0]["labels"].count(-100)
    assert prompt_len > 0 and examples[0]["input_ids"][:prompt_len] != examples[0]["labels"][:prompt_len]

    def formatted() -> float:
        outs = worker.generate(insts[:4], 1, max_new_tokens=32, temperature=0.0)
        return sum(format_problem("cvs", g.completions[0].text) is None for g in outs) / len(outs)

    before = formatted()
    cfg = load_config("cpu_demo", [f"model.path={tiny_model_dir}", "learner.lr=0.01", "learner.micro_batch_size=64"])
    learner = DeepSpeedLearner(cfg, rank=0, world_size=1, master_port=29617)
    learner.setup()
    try:
        # 80 steps: at 40 the format came out in only 4 of 7 runs (SFT on CPU is not bit-reproducible run to run)
        losses = [learner.sft_step(build_sft_batch(examples))["loss"] for _ in range(80)]
        worker.apply_weights(learner.weight_payload())
    finally:
        learner.shutdown()
    after = formatted()
    print(f"SFT loss {losses[0]:.3f} -> {losses[-1]:.3f}; answers in the CVS format {before:.2f} -> {after:.2f}")
    assert losses[-1] < 0.3 * losses[0]
    assert before == 0.0 and after >= 0.75
