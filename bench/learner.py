"""Benchmark of the learner step and of the hf rollout backend on the tiny Qwen2.5-VL (CPU, side by side in one run).

1. **DeepSpeed overhead.** ``learner.deepspeed_learner.DeepSpeedLearner.train_step`` (ZeRO-0, 1 rank, gloo, CPU)
   against a plain PyTorch loop on an identical copy of the model: same policy batch (from
   ``actors.rollout.RolloutWorker.generate``, G = 8), same forward (the learner's ``_PolicyModule``: each video
   encoded once per micro-batch), same loss (``learner.losses.policy_loss`` with the learner's global token/sequence
   denominators), same gradient clipping, ``torch.optim.AdamW`` with the same parameter groups. The plain loop gets
   its micro-batch tensors pre-built; building them (``_prepare`` + ``_micro_inputs``, the learner's own
   validation and media bookkeeping) is timed as a third candidate, ``prep``. So
   ``train_step / plain`` = everything the learner adds (engine, validation, metrics), and
   ``(train_step - prep) / plain`` ≈ the DeepSpeed engine alone. Before timing, one step of each from the same
   weights must give the same loss (a check that the two loops compute the same thing).
2. **Rollout tokens/s** of ``RolloutWorker.generate`` (hf backend, sampling at temperature 1) for video prompts
   against the same questions with the video removed (text-only prompts), interleaved rounds; generated tokens
   per second of wall time, decode time included for video.
3. **Rollout vs plain generate.** ``RolloutWorker.generate`` (G = 8; video decode + prompt encoding + the hf
   backend), the backend alone on pre-encoded prompts, and a bare ``model.generate`` loop on the same pre-encoded
   prompts with the same sampling settings and seeds (no per-step logits kept, no log-probs, no detokenisation),
   interleaved rounds. The three must generate the very same tokens (``same tokens``), so the time ratio is the
   cost of what the rollout adds to transformers' generate.

The tiny model (``data.tiny_model.build_tiny_model``, hidden 64, 2 layers, ~0.4 M params) and the synthetic data
are built in a temporary folder; the tokenizer is trained on the synthetic questions and answers.

Run: ``python -m bench.learner [--quick] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from bench.common import Report, compare, fmt_num, free_port, parser, ratio, require_groups, synth_tiny_model

G = 8


def _plain_setup(model_path: str, cfg: Any) -> tuple[Any, torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """The same checkpoint as the learner, wrapped the same way, with AdamW over the same parameter groups."""
    from transformers import AutoModelForImageTextToText

    from learner.deepspeed_learner import _PolicyModule  # noqa: PLC2701 - the learner's forward, without DeepSpeed
    from learner.model_io import use_reference_mrope

    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32, local_files_only=True,
                                                        attn_implementation=cfg.model.attn_implementation,
                                                        use_safetensors=True)
    use_reference_mrope(model)  # the learner's RoPE positions
    model.config.use_cache = False
    model.train()
    wrapper = _PolicyModule(model)
    params = [p for p in wrapper.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(cfg.learner.weight_decay)},
                             {"params": no_decay, "weight_decay": 0.0}], lr=float(cfg.learner.lr))
    return wrapper, opt, params


def _prep(lrn: Any, batch: dict[str, Any]) -> tuple[list[dict[str, Any]], float, float]:
    """Micro-batch tensors exactly as ``train_step`` builds them, plus the global token and sequence counts.
    Uses the learner's private helpers on purpose: the plain loop must see the very same tensors."""
    b, skipped = lrn._prepare(batch, "policy")  # noqa: SLF001
    if skipped:
        raise RuntimeError(f"the benchmark batch has unusable rows: {dict(skipped)}")
    mask = b["response_mask"]
    g_tokens, g_seqs = float(mask.sum()), float((mask.sum(dim=1) > 0).sum())
    mbs = []
    for rows in lrn._microbatches(b["input_ids"].shape[0]):  # noqa: SLF001
        mbs.append(lrn._micro_inputs(b, rows, lrn._first_scored(b, rows, "policy")))  # noqa: SLF001
    return mbs, g_tokens, g_seqs


def _plain_step(wrapper: Any, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                mbs: list[dict[str, Any]], g_tokens: float, g_seqs: float, cfg: Any) -> float:
    """One GRPO update in plain PyTorch: forward, policy_loss, backward per micro-batch; clip; AdamW step."""
    from learner.deepspeed_learner import DeepSpeedLearner
    from learner.losses import policy_loss

    lc = cfg.learner
    total = 0.0
    for mb in mbs:
        need = ("image" in mb["media"], "video" in mb["media"])
        logits, anchor = wrapper(mb["input_ids"], mb["attention_mask"], mb["mm_token_type_ids"], mb["media"], need,
                                 int(mb["keep"]))
        logits = logits.float()
        if mb.get("temperature") is not None:
            t = mb["temperature"].float().clamp(min=1e-6)
            logits = logits / torch.where(mb["temperature"] > 0, t, torch.ones_like(t)).view(-1, 1, 1)
        lp = DeepSpeedLearner._aligned_logprobs(logits, mb["input_ids"], mb["keep"])  # noqa: SLF001
        loss, _ = policy_loss(lp, mb["old_logprobs"], mb["advantages"], mb["response_mask"], clip_low=lc.clip_low,
                              clip_high=lc.clip_high, agg=lc.loss_agg, max_len=int(cfg.rollout.max_new_tokens),
                              num_tokens=g_tokens, num_seqs=g_seqs)
        (loss + anchor).backward()
        total += float(loss.detach())
    if lc.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, float(lc.max_grad_norm))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total


def _tokens(groups: list[Any]) -> int:
    return sum(len(c.response_ids) for g in groups if hasattr(g, "completions") for c in g.completions)


def rollout_rates(worker: Any, video: list[Any], max_new_tokens: int, rounds: int, seed: int
                  ) -> dict[str, Any]:
    """Interleaved rounds of generate() on video prompts vs the same prompts with no media; tokens/s per round."""
    text = [dataclasses.replace(i, video=None, image=None, uid=i.uid + "#text") for i in video]
    cands = {"video": video, "text": text}
    rates: dict[str, list[float]] = {k: [] for k in cands}
    decode_share: list[float] = []
    prompt_len: dict[str, float] = {}
    for name, prompts in cands.items():  # warm-up (first call pays lazy initialisation)
        groups = require_groups(worker.generate(prompts, G, max_new_tokens=max_new_tokens, temperature=1.0,
                                                seed=seed), f"{name} prompts")
        prompt_len[name] = statistics.mean(len(g.prompt_ids) for g in groups)
    names = list(cands)
    for r in range(rounds):
        for name in names[r % 2:] + names[: r % 2]:
            t0 = time.perf_counter()
            groups = worker.generate(cands[name], G, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed + r)
            dt = time.perf_counter() - t0
            rates[name].append(_tokens(groups) / dt)
            if name == "video":
                decode_share.append(sum(g.extra.get("decode_s", 0.0) for g in groups) / dt)
    return {"prompts": len(video), "G": G, "max_new_tokens": max_new_tokens,
            "video_tokens_s": statistics.median(rates["video"]), "text_tokens_s": statistics.median(rates["text"]),
            "video_vs_text": statistics.median(v / t for v, t in zip(rates["video"], rates["text"])),
            "video_prompt_tokens": prompt_len["video"], "text_prompt_tokens": prompt_len["text"],
            "video_decode_share": statistics.median(decode_share)}


def response_tokens(rows: list[list[int]], stop_ids: set[int]) -> list[list[int]]:
    """Each row's generated ids up to and including its first stop token: what the hf backend keeps."""
    from learner.experience import first_stop

    out = []
    for ids in rows:
        stop = first_stop(ids, stop_ids)
        out.append(ids[: stop + 1] if stop is not None else list(ids))
    return out


def plain_generate(engine: Any, encoded: list[dict[str, Any]], n: int, max_new_tokens: int, seed: int
                   ) -> list[list[int]]:
    """The baseline: a bare ``model.generate`` loop over the same pre-encoded prompts with the hf backend's
    sampling settings (temperature 1, its stop and suppressed tokens, the same per-prompt seeds) but without what
    the backend adds (logits kept per step, log-probs, detokenisation). Returns the kept response ids per sample."""
    from transformers import GenerationConfig

    gen_cfg = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=None, repetition_penalty=None,
                               max_new_tokens=max_new_tokens, num_return_sequences=n,
                               eos_token_id=sorted(engine.stop_ids), pad_token_id=engine.pad_id,
                               suppress_tokens=engine.suppressed or None)
    out: list[list[int]] = []
    for i, inputs in enumerate(encoded):
        torch.manual_seed(seed + i)  # RolloutWorker.generate seeds prompt i with seed + i
        with torch.no_grad():
            seqs = engine.model.generate(**inputs, generation_config=gen_cfg)
        out += response_tokens(seqs[:, inputs["input_ids"].shape[1]:].tolist(), engine.stop_ids)
    return out


def rollout_vs_plain(worker: Any, video: list[Any], max_new_tokens: int, rounds: int, min_time: float, seed: int
                     ) -> dict[str, Any]:
    """Tokens/s of ``RolloutWorker.generate`` (decode + prompt encoding + backend) and of the backend alone on
    pre-encoded prompts, against ``plain_generate`` on the same pre-encoded prompts; interleaved rounds.
    Same seeds everywhere, so all three generate the same tokens (checked: ``same_tokens``)."""
    encoded = [worker.encode_prompt(inst) for inst in video]  # (model inputs, raw media), video decoded once here
    inputs = [e[0] for e in encoded]

    def run_worker() -> list[list[int]]:
        # batched=False: the per-prompt path, like for like with the plain loop
        groups = require_groups(worker.generate(video, G, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed,
                                                batched=False))
        return [c.response_ids for g in groups for c in g.completions]

    def run_engine() -> list[list[int]]:
        return [c.response_ids for i, (inp, raw) in enumerate(encoded)
                for c in worker.engine.generate(inp, raw, G, max_new_tokens=max_new_tokens, temperature=1.0,
                                                top_p=1.0, seed=seed + i)]

    def run_plain() -> list[list[int]]:
        return plain_generate(worker.engine, inputs, G, max_new_tokens, seed)

    ids = {"worker": run_worker(), "engine": run_engine(), "plain": run_plain()}
    same = ids["worker"] == ids["plain"] == ids["engine"]
    tokens = sum(len(x) for x in ids["plain"])
    t = compare({"worker": run_worker, "engine": run_engine, "plain": run_plain}, rounds=rounds, min_time=min_time,
                warmup=1)
    return {"prompts": len(video), "G": G, "max_new_tokens": max_new_tokens, "tokens_per_call": tokens,
            "worker_tokens_s": tokens / t["worker"].median, "engine_tokens_s": tokens / t["engine"].median,
            "plain_tokens_s": tokens / t["plain"].median, "worker_vs_plain": ratio(t["worker"], t["plain"]),
            "engine_vs_plain": ratio(t["engine"], t["plain"]), "same_tokens": same,
            "noise": max(x.spread for x in t.values())}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("learner", __doc__.split("\n")[0])
    args: argparse.Namespace = ap.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rep = Report("learner", args, uses_torch=True)
    n_prompts, max_new, rounds, min_time = (2, 16, 5, 0.3) if args.quick else (4, 32, 7, 1.5)

    from actors.rollout import RolloutWorker
    from cluster.config import load_config
    from learner.deepspeed_learner import DeepSpeedLearner, build_policy_batch

    with tempfile.TemporaryDirectory(prefix="bench-learner-") as tmp:
        instances, model_path = synth_tiny_model(Path(tmp), args.seed)
        cfg = load_config("cpu_demo", [f"model.path={model_path}", "learner.lr=1e-5", "learner.warmup_steps=0",
                                       f"rollout.max_new_tokens={max_new}"])
        mc = cfg.data
        worker = RolloutWorker(model_path, max_frames=mc.max_frames, max_pixels=mc.max_pixels,
                               min_pixels=mc.min_pixels)
        video = [i for i in instances if isinstance(i.video, str) and i.qa_type in ("tal", "stg", "next_action",
                                                                                     "video_summary_gpt")][:n_prompts]
        if len(video) < n_prompts:
            raise RuntimeError(f"synthetic data has only {len(video)} MP4 prompts, need {n_prompts}")

        # -- rollout -------------------------------------------------------------------------------------------
        roll = rollout_rates(worker, video, max_new, rounds, args.seed)
        rep.table("rollout", "hf rollout backend, RolloutWorker.generate (sampling, temperature 1; tokens = generated "
                  "response tokens)", [roll], [
                      ("prompts", "prompts", fmt_num), ("G", "G", fmt_num), ("max_new_tokens", "max new", fmt_num),
                      ("video_prompt_tokens", "prompt tok (video)", fmt_num),
                      ("text_prompt_tokens", "prompt tok (text)", fmt_num),
                      ("video_tokens_s", "tokens/s video", fmt_num), ("text_tokens_s", "tokens/s text", fmt_num),
                      ("video_vs_text", "video / text", fmt_num),
                      ("video_decode_share", "decode share (video)", fmt_num)])

        plain = rollout_vs_plain(worker, video, max_new, rounds, min_time, args.seed)
        if not plain["same_tokens"]:
            rep.note("RolloutWorker.generate and the plain generate loop sampled different tokens from the same "
                     "seeds: their tokens/s are still comparable, the identical-work check is not")
        rep.table("rollout_vs_plain", "hf rollout backend vs a plain model.generate loop, same pre-encoded prompts "
                  "and sampling (tokens/s of generated response tokens; worker includes video decode and prompt "
                  "encoding, engine is the backend alone)", [plain], [
                      ("prompts", "prompts", fmt_num), ("G", "G", fmt_num), ("max_new_tokens", "max new", fmt_num),
                      ("tokens_per_call", "tokens/call", fmt_num), ("worker_tokens_s", "worker tok/s", fmt_num),
                      ("engine_tokens_s", "engine tok/s", fmt_num), ("plain_tokens_s", "plain tok/s", fmt_num),
                      ("worker_vs_plain", "worker / plain (time)", fmt_num),
                      ("engine_vs_plain", "engine / plain (time)", fmt_num),
                      ("same_tokens", "same tokens", fmt_num), ("noise", "noise", lambda x: fmt_num(x, 2))])

        # -- learner -------------------------------------------------------------------------------------------
        groups = worker.generate(video, G, max_new_tokens=max_new, temperature=1.0, seed=args.seed + 100)
        gen = torch.Generator().manual_seed(args.seed)
        adv = (torch.rand(len(groups), G, generator=gen) * 2 - 1).tolist()
        batch = build_policy_batch(groups, adv)
        t0 = time.perf_counter()
        lrn = DeepSpeedLearner(cfg, rank=0, world_size=1, master_port=free_port())
        info = lrn.setup()
        setup_s = time.perf_counter() - t0
        try:
            wrapper, opt, params = _plain_setup(model_path, cfg)
            mbs, g_tokens, g_seqs = _prep(lrn, batch)
            ds_loss = lrn.train_step(batch)["loss"]
            plain_loss = _plain_step(wrapper, opt, params, mbs, g_tokens, g_seqs, cfg)
            same = abs(ds_loss - plain_loss) <= 1e-5 * max(1.0, abs(ds_loss))
            if not same:
                rep.note(f"first-step losses differ: deepspeed {ds_loss!r}, plain {plain_loss!r}")
            t = compare({"deepspeed": lambda: lrn.train_step(batch),
                         "plain": lambda: _plain_step(wrapper, opt, params, mbs, g_tokens, g_seqs, cfg),
                         "prep": lambda: _prep(lrn, batch)}, rounds=rounds, min_time=min_time, warmup=3)
        finally:
            lrn.shutdown()
        n = int(batch["input_ids"].shape[0])
        ds_s, plain_s, prep_s = t["deepspeed"].median, t["plain"].median, t["prep"].median
        row = {"samples": n, "seq_len": int(batch["input_ids"].shape[1]), "micro_batches": len(mbs),
               "params": info["params"], "deepspeed_samples_s": n / ds_s, "plain_samples_s": n / plain_s,
               "overhead": ratio(t["deepspeed"], t["plain"]), "engine_overhead": (ds_s - prep_s) / plain_s,
               "prep_ms": 1e3 * prep_s, "setup_s": setup_s, "same_first_loss": same,
               "noise": max(x.spread for x in t.values())}
        rep.table("train_step", "GRPO train step, ZeRO-0, 1 rank, gloo, CPU: DeepSpeedLearner.train_step vs a plain "
                  "PyTorch loop (same model, batch, loss, AdamW)", [row], [
                      ("samples", "samples", fmt_num), ("seq_len", "seq len", fmt_num),
                      ("micro_batches", "micro", fmt_num), ("params", "params", fmt_num),
                      ("deepspeed_samples_s", "deepspeed samples/s", fmt_num),
                      ("plain_samples_s", "plain samples/s", fmt_num), ("overhead", "ds / plain", fmt_num),
                      ("engine_overhead", "(ds - prep) / plain", fmt_num), ("prep_ms", "prep ms", fmt_num),
                      ("setup_s", "setup s", fmt_num), ("same_first_loss", "same loss", fmt_num),
                      ("noise", "noise", lambda x: fmt_num(x, 2))])
    rep.summary["deepspeed_overhead"] = row["overhead"]
    rep.summary["engine_overhead"] = row["engine_overhead"]
    rep.summary["same_first_loss"] = same
    rep.summary["rollout_video_vs_text"] = roll["video_vs_text"]
    rep.summary["rollout_tokens_s_video"] = roll["video_tokens_s"]
    rep.summary["rollout_tokens_s_worker"] = plain["worker_tokens_s"]
    rep.summary["rollout_tokens_s_plain"] = plain["plain_tokens_s"]
    rep.summary["rollout_worker_vs_plain"] = plain["worker_vs_plain"]
    rep.summary["rollout_engine_vs_plain"] = plain["engine_vs_plain"]
    rep.summary["rollout_same_tokens"] = plain["same_tokens"]
    rep.targets["deepspeed_overhead"] = "close to 1 (ZeRO-0 on 1 rank should add little)"
    rep.note("tiny model: absolute samples/s and tokens/s say nothing about a 7B model on GPU; the ratios are the "
             "figures")
    return rep.finish()


if __name__ == "__main__":
    main()
