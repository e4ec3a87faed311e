"""Benchmark of the learner step at ZeRO-0/2/3, on 1 rank and on 2 data-parallel ranks (gloo, CPU), against a
plain PyTorch loop on the same model and batch, side by side in one run.

Candidates (timed interleaved by ``bench.common.compare``; one call = one GRPO update on the whole global batch):

* ``plain``        the plain PyTorch loop of ``bench.learner`` (``_plain_step``: same micro-batch tensors, forward,
                   ``policy_loss``, gradient clipping and AdamW parameter groups as the learner), in this process;
* ``zero0_local``  ``DeepSpeedLearner.train_step`` (ZeRO-0, 1 rank) in this process: ``bench.learner``'s
                   candidate, here to show what the Ray hop adds (``zero0 / zero0_local``);
* ``zero0``, ``zero2``, ``zero3``            ``LearnerGroup.train_step`` with 1 rank (a Ray actor), as the trainer
                                             runs the learner. Each in its own process, like the 2-rank ones, so
                                             1 and 2 ranks compare like for like, and because a ZeRO-3 engine
                                             replaces ``torch.nn.functional.linear`` process-wide (DeepSpeed's
                                             ``zero3_linear_wrap``, left in place): in this process it would change
                                             the plain loop and ``zero0_local`` too;
* ``zero0x2``, ``zero2x2``, ``zero3x2``      the same with 2 ranks: two Ray actor processes, one gloo process group,
                                             the global batch split by ``learner.deepspeed_learner.split_batch``
                                             (what ``LearnerGroup`` does), so every candidate does the same work per
                                             step and samples/s = global batch / step time.

The batch: prompts x G = 8 samples from ``actors.rollout.RolloutWorker.generate`` on the tiny Qwen2.5-VL
(``data.tiny_model.build_tiny_model``) with random advantages, as ``bench.learner`` builds it; ``cpu_demo``
preset (micro-batch 16, fp32), lr 1e-5 so hundreds of timed steps stay finite.

Checks. Before timing, every candidate's first step (from the same checkpoint weights) must give the plain loop's
loss (``|d| <= 1e-5 * max(1, |loss|)``), gradient norm (relative 1e-4) and global token / sequence counts (exact):
rounding from a different reduction order moves these by ~1e-6 relative, while a lost sample, a missing gradient
all-reduce or a wrong world-size scale moves them by percents to a factor of 2. Every timed step must be applied
(none skipped as non-finite: a skipped step does less work). After timing, the ranks of each 2-rank learner must
hold identical weights: a full-byte checksum (``weights_checksum(mode="full")``) of the (ZeRO-3: gathered)
parameters on each rank. Peak RSS per rank (``resource.getrusage`` inside each rank process) and each rank's torch
thread count come from the same probe. The probe runs through Ray's ``__ray_call__`` (a developer API: a function
run on the actor instance), so the learner actor needs no benchmark-only methods. Under ZeRO-3 the gathered weights
are the same on every rank by construction; the check has teeth at ZeRO-0/2, where each rank keeps its own copy.

``ray_call`` (summary only) times the Ray hop alone: the batch split and shipped to a 1-rank group's actor and a
small reply back, no compute.

Run: ``python -m bench.learner_zero [--quick] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence
from unittest import mock

import torch

from bench.common import (Report, Timing, compare, fmt_bytes, fmt_num, free_port, init_local_ray, parser, ratio,
                          require_groups, synth_tiny_model)
from bench.learner import G, _plain_setup, _plain_step, _prep

GET_TIMEOUT_S = 600.0
LOSS_TOL = 1e-5  # absolute, scaled by max(1, |loss|)
GRAD_NORM_RTOL = 1e-4
# (name, ZeRO stage, ranks); ranks 0 = the in-process learner (no Ray)
LEARNERS: tuple[tuple[str, int, int], ...] = (("zero0_local", 0, 0), ("zero0", 0, 1), ("zero2", 2, 1),
                                              ("zero3", 3, 1), ("zero0x2", 0, 2), ("zero2x2", 2, 2),
                                              ("zero3x2", 3, 2))


# -- pure pieces -------------------------------------------------------------------------------------------------
def split_summary(batch: Mapping[str, Any], ranks: int) -> list[dict[str, Any]]:
    """What each of ``ranks`` ranks trains on when ``LearnerGroup`` splits ``batch`` (``split_batch``): rows,
    scored (response) tokens, sequences with something to learn, and distinct media entries, per rank."""
    from learner.deepspeed_learner import split_batch

    out = []
    for r, part in enumerate(split_batch(batch, ranks)):
        mask = torch.as_tensor(part["response_mask"])
        out.append({"rank": r, "rows": int(mask.shape[0]), "tokens": int(mask.sum()),
                    "sequences": int((mask.sum(dim=1) > 0).sum()), "media": len(part.get("multimodal") or [])})
    return out


def first_step_check(ref: Mapping[str, float], got: Mapping[str, float]) -> dict[str, Any]:
    """Compare a candidate's first-step metrics with the plain loop's (``loss``, ``grad_norm``, ``tokens``,
    ``sequences``). Returns the differences and ``same`` (all within the tolerances of the module docstring; a
    NaN grad norm on either side, e.g. with clipping off, leaves the norm out of the verdict)."""
    d_loss = abs(float(got["loss"]) - float(ref["loss"]))
    loss_ok = d_loss <= LOSS_TOL * max(1.0, abs(float(ref["loss"])))
    gn_ref, gn = float(ref.get("grad_norm", math.nan)), float(got.get("grad_norm", math.nan))
    rel_gn = math.nan if math.isnan(gn_ref) or math.isnan(gn) else abs(gn - gn_ref) / max(abs(gn_ref), 1e-12)
    gn_ok = math.isnan(rel_gn) or rel_gn <= GRAD_NORM_RTOL
    counts_ok = (int(got["tokens"]) == int(ref["tokens"]) and int(got["sequences"]) == int(ref["sequences"]))
    return {"loss_diff": d_loss, "grad_norm_rel_diff": rel_gn, "counts_ok": counts_ok,
            "same": bool(loss_ok and gn_ok and counts_ok)}


def candidate_rows(timings: Mapping[str, Timing], samples: int, meta: Mapping[str, Mapping[str, Any]],
                   base: str = "plain", zero0: str = "zero0") -> list[dict[str, Any]]:
    """One row per timed candidate: samples/s (global batch / median step time), step ms, time ratios against
    ``base`` and ``zero0`` (medians of per-round ratios, > 1 = slower), and ``noise``: the largest (max - min) /
    median of the per-round times among the candidate and the two it is compared with. ``meta[name]`` adds columns
    (stage, ranks, checks, memory)."""
    rows = []
    for name, t in timings.items():
        peers = [t] + [timings[k] for k in (base, zero0) if k in timings]
        rows.append({"candidate": name, **dict(meta.get(name, {})), "samples_s": samples / t.median,
                     "step_ms": 1e3 * t.median,
                     "vs_plain": ratio(t, timings[base]) if base in timings else math.nan,
                     "vs_zero0": ratio(t, timings[zero0]) if zero0 in timings else math.nan,
                     "noise": max(p.spread for p in peers)})
    return rows


# -- inside a rank process (run through __ray_call__) ------------------------------------------------------------
def rank_probe(actor: Any) -> dict[str, Any]:
    """In a ``LearnerRank`` actor: full-byte checksum of its (gathered) parameters, peak RSS, torch threads. A
    collective under ZeRO-3: call it on every rank of the group together."""
    import resource as res

    import torch as th

    from learner.weight_sync import iter_gathered, weights_checksum

    learner = actor.learner
    pairs: list[tuple[str, Any]] = []
    for chunk in iter_gathered(learner.model):  # whole parameters; under ZeRO-3 only inside the gather: copy
        pairs += [(n, p.detach().to("cpu", copy=True)) for n, p in chunk]
    return {"checksum": weights_checksum(pairs, mode="full"), "version": int(learner.version),
            "peak_rss": res.getrusage(res.RUSAGE_SELF).ru_maxrss * 1024, "torch_threads": th.get_num_threads(),
            "pid": os.getpid()}


# -- driver side -------------------------------------------------------------------------------------------------
def _policy_batch(worker: Any, video: list[Any], max_new: int, seed: int) -> dict[str, Any]:
    """G samples per prompt from the rollout worker, random advantages in [-1, 1] (as ``bench.learner``)."""
    from learner.deepspeed_learner import build_policy_batch

    groups = require_groups(worker.generate(video, G, max_new_tokens=max_new, temperature=1.0, seed=seed + 100))
    gen = torch.Generator().manual_seed(seed)
    adv = (torch.rand(len(groups), G, generator=gen) * 2 - 1).tolist()
    return build_policy_batch(groups, adv)


def _plain_first_step(wrapper: Any, opt: Any, params: Any, mbs: Any, g_tokens: float, g_seqs: float, cfg: Any
                      ) -> dict[str, float]:
    """``_plain_step`` once, also catching the gradient norm its ``clip_grad_norm_`` call computes (pre-clip)."""
    real = torch.nn.utils.clip_grad_norm_
    norms: list[float] = []

    def spy(*a: Any, **k: Any) -> torch.Tensor:
        n = real(*a, **k)
        norms.append(float(n))
        return n

    with mock.patch.object(torch.nn.utils, "clip_grad_norm_", spy):
        loss = _plain_step(wrapper, opt, params, mbs, g_tokens, g_seqs, cfg)
    return {"loss": loss, "grad_norm": norms[0] if norms else float("nan"), "tokens": g_tokens,
            "sequences": g_seqs}


def _start_groups(cfgs: Mapping[int, Any], model_path: str) -> tuple[Any, dict[str, Any], float]:
    """Create every Ray learner group of ``LEARNERS`` at once (each ``LearnerGroup.__init__`` blocks until its ranks
    are set up; one thread each, so the rank processes start and load the model concurrently)."""
    from concurrent.futures import ThreadPoolExecutor

    from actors.learner_actor import LearnerGroup

    todo = [(name, stage, ranks) for name, stage, ranks in LEARNERS if ranks > 0]
    pool = ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="learner-setup")
    futures = {name: pool.submit(LearnerGroup, cfgs[stage], model_path=model_path, num_ranks=ranks,
                                 timeout_s=GET_TIMEOUT_S) for name, stage, ranks in todo}
    return pool, futures, time.perf_counter()


def _wait_groups(pending: tuple[Any, dict[str, Any], float], groups: dict[str, Any]) -> float:
    """Collect the groups of ``_start_groups`` into ``groups`` (all that started, also when one failed, so the
    caller can shut them down); re-raise the first failure. Returns the seconds from start to the last one up."""
    pool, futures, t0 = pending
    error: Optional[BaseException] = None
    for name, fut in futures.items():
        try:
            groups[name] = fut.result(timeout=GET_TIMEOUT_S)
        except BaseException as e:  # noqa: BLE001 - keep collecting: the others must be shut down too
            error = error or e
    pool.shutdown(wait=False)
    if error is not None:
        raise error
    return time.perf_counter() - t0


def _probe_group(group: Any) -> list[dict[str, Any]]:
    refs = [a.__ray_call__.remote(rank_probe) for a in group.ranks]
    return group.wait(refs, "probe")


def _counting(step: Callable[[], Mapping[str, float]], bad: dict[str, int], name: str) -> Callable[[], None]:
    """``step`` as a timing candidate that counts the steps not applied (they would do less work)."""
    def call() -> None:
        m = step()
        if m.get("optimizer_steps", 1.0) != 1.0 or m.get("skipped_nonfinite", 0.0):
            bad[name] = bad.get(name, 0) + 1
    return call


def _noop(actor: Any, part: Mapping[str, Any]) -> dict[str, float]:
    """In a rank actor: nothing (``ray_call``: ship a batch to a rank and back, no compute)."""
    return {"rows": float(part["input_ids"].shape[0])}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build the batch and the learners, check the first steps, time the candidates, probe the ranks."""
    import ray

    from actors.rollout import RolloutWorker
    from cluster.config import load_config
    from learner.deepspeed_learner import DeepSpeedLearner, split_batch
    from learner.weight_sync import weights_checksum

    n_prompts, max_new, rounds, min_time = (2, 16, 4, 0.3) if args.quick else (4, 32, 7, 1.5)
    # before the in-process learner sets RANK/MASTER_PORT here: the raylet would inherit them
    env = {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads > 0:  # the rank processes get the driver's thread count
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    started_here = init_local_ray(num_cpus=2, env_vars=env)
    groups: dict[str, Any] = {}
    pending: Optional[tuple[Any, dict[str, Any], float]] = None
    local: Optional[DeepSpeedLearner] = None
    out: dict[str, Any] = {"rounds": rounds, "min_time": min_time}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-learner-zero-") as tmp:
            instances, model_path = synth_tiny_model(Path(tmp), args.seed)
            base = ["learner.lr=1e-5", "learner.warmup_steps=0", f"rollout.max_new_tokens={max_new}",
                    "learner.num_cpus=0", f"cluster.get_timeout_s={GET_TIMEOUT_S}", "learner.collective_timeout_s=300"]
            cfgs = {st: load_config("cpu_demo", [f"model.path={model_path}", f"learner.zero_stage={st}", *base])
                    for st in (0, 2, 3)}
            cfg = cfgs[0]
            # the Ray groups start (processes, imports, model load) while this process builds the batch
            pending = _start_groups(cfgs, model_path)
            mc = cfg.data
            worker = RolloutWorker(model_path, max_frames=mc.max_frames, max_pixels=mc.max_pixels,
                                   min_pixels=mc.min_pixels)
            video = [i for i in instances if isinstance(i.video, str) and i.qa_type in (
                "tal", "stg", "next_action", "video_summary_gpt")][:n_prompts]
            if len(video) < n_prompts:
                raise RuntimeError(f"synthetic data has only {len(video)} MP4 prompts, need {n_prompts}")
            batch = _policy_batch(worker, video, max_new, args.seed)
            del worker
            gc.collect()

            saved_env = dict(os.environ)
            t0 = time.perf_counter()
            local = DeepSpeedLearner(cfg, rank=0, world_size=1, master_port=free_port(), model_path=model_path)
            try:
                out["info"] = local.setup()
            finally:  # the rank's RANK/MASTER_PORT/... must not leak into anything started later
                os.environ.clear()
                os.environ.update(saved_env)
            out["setup_local_s"] = time.perf_counter() - t0
            wrapper, opt, params = _plain_setup(model_path, cfg)
            mbs, g_tokens, g_seqs = _prep(local, batch)
            todo, pending = pending, None
            out["setup_groups_s"] = _wait_groups(todo, groups)

            # -- same work: the first step of each from the checkpoint weights -------------------------------
            first = {"plain": _plain_first_step(wrapper, opt, params, mbs, g_tokens, g_seqs, cfg),
                     "zero0_local": local.train_step(batch)}
            for name, group in groups.items():
                first[name] = group.train_step(batch)

            # -- timing ------------------------------------------------------------------------------------------
            bad: dict[str, int] = {}
            lrn = local
            cands: dict[str, Callable[[], Any]] = {
                "plain": lambda: _plain_step(wrapper, opt, params, mbs, g_tokens, g_seqs, cfg),
                "zero0_local": _counting(lambda: lrn.train_step(batch), bad, "zero0_local")}
            for name, group in groups.items():
                cands[name] = _counting(lambda g=group: g.train_step(batch), bad, name)
            g0 = groups["zero0"]
            cands["ray_call"] = lambda: g0.wait([g0.ranks[0].__ray_call__.remote(_noop, split_batch(batch, 1)[0])])
            t = compare(cands, rounds=rounds, min_time=min_time, warmup=2)

            # -- after timing: identical weights on the ranks, memory ------------------------------------------
            out["probes"] = {name: _probe_group(group) for name, group in groups.items()}
            out["local_checksum"] = weights_checksum(local.model, mode="full")
    finally:
        if pending is not None:  # failed before the groups were collected: collect them to shut them down
            try:
                _wait_groups(pending, groups)
            except BaseException:  # noqa: BLE001 - the first error is the one being raised
                pass
        for group in groups.values():
            group.shutdown()
        if local is not None:
            local.shutdown()
        if started_here and ray.is_initialized():
            ray.shutdown()
    out.update(batch=batch, first=first, timings=t, bad=bad)
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("learner_zero", __doc__.split("\n")[0])
    args: argparse.Namespace = ap.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rep = Report("learner_zero", args, uses_torch=True)
    res = measure(args)
    driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    batch, first, t, bad, probes = res["batch"], res["first"], res["timings"], res["bad"], res["probes"]
    checks = {name: first_step_check(first["plain"], m) for name, m in first.items() if name != "plain"}

    n = int(batch["input_ids"].shape[0])
    meta: dict[str, dict[str, Any]] = {"plain": {"stage": "-", "ranks": 1, "where": "driver"}}
    for name, stage, ranks in LEARNERS:
        c = checks[name]
        m: dict[str, Any] = {"stage": str(stage), "ranks": max(ranks, 1), "where": "driver" if ranks == 0 else "ray",
                             "loss_diff": c["loss_diff"], "grad_norm_rel_diff": c["grad_norm_rel_diff"],
                             "same_first_step": c["same"], "skipped_steps": bad.get(name, 0)}
        if ranks == 0:
            m["checksums"] = [res["local_checksum"]]
        else:
            p = probes[name]
            m.update(checksums=[x["checksum"] for x in p], peak_rss_per_rank=[x["peak_rss"] for x in p],
                     peak_rss_max=max(x["peak_rss"] for x in p), rank_torch_threads=[x["torch_threads"] for x in p],
                     ranks_identical=len({x["checksum"] for x in p}) == 1 if ranks > 1 else None)
        meta[name] = m
    timed = {k: v for k, v in t.items() if k != "ray_call"}
    rows = candidate_rows(timed, n, meta)

    rep.table("split", "How 2 ranks split the global batch (learner.deepspeed_learner.split_batch, as LearnerGroup)",
              split_summary(batch, 2), [
                  ("rank", "rank", fmt_num), ("rows", "samples", fmt_num), ("tokens", "scored tokens", fmt_num),
                  ("sequences", "sequences", fmt_num), ("media", "videos", fmt_num)])
    rep.table("train_step", f"GRPO update on {n} samples (seq len {int(batch['input_ids'].shape[1])}, "
              f"{res['info']['params']:,} params), gloo, CPU: samples/s = global batch / median step time; ratios "
              "are medians of per-round time ratios (> 1 = slower); peak RSS/rank = getrusage in each rank process, "
              "max over the ranks (the driver's is in the summary)", rows, [
                  ("candidate", "candidate", str), ("stage", "ZeRO", str), ("ranks", "ranks", fmt_num),
                  ("where", "where", str), ("samples_s", "samples/s", fmt_num), ("step_ms", "step ms", fmt_num),
                  ("vs_plain", "/ plain", fmt_num), ("vs_zero0", "/ zero0", fmt_num),
                  ("peak_rss_max", "peak RSS/rank", fmt_bytes), ("same_first_step", "same step 1", fmt_num),
                  ("ranks_identical", "ranks equal", fmt_num), ("skipped_steps", "skipped", fmt_num),
                  ("noise", "noise", lambda x: fmt_num(x, 2))])
    rep.table("first_step", "First step from the checkpoint weights vs the plain loop (tolerances: loss 1e-5 x "
              "max(1, |loss|), grad norm 1e-4 relative, token and sequence counts exact)",
              [{"candidate": k, "loss": first[k]["loss"], "grad_norm": first[k]["grad_norm"],
                "tokens": int(first[k]["tokens"]), "sequences": int(first[k]["sequences"]),
                "loss_diff": checks[k]["loss_diff"] if k in checks else None,
                "grad_norm_rel_diff": checks[k]["grad_norm_rel_diff"] if k in checks else None} for k in first], [
                  ("candidate", "candidate", str), ("loss", "loss", lambda x: fmt_num(x, 6)),
                  ("grad_norm", "grad norm", lambda x: fmt_num(x, 6)), ("tokens", "tokens", fmt_num),
                  ("sequences", "sequences", fmt_num), ("loss_diff", "|d loss|", lambda x: fmt_num(x, 2)),
                  ("grad_norm_rel_diff", "d norm (rel)", lambda x: fmt_num(x, 2))])

    by = {r["candidate"]: r for r in rows}
    rep.summary["samples"] = n
    for name in ("zero0", "zero2", "zero3", "zero0x2", "zero2x2", "zero3x2"):
        rep.summary[f"{name}_vs_plain"] = by[name]["vs_plain"]
    rep.summary["zero0_vs_zero0_local"] = ratio(t["zero0"], t["zero0_local"])
    rep.summary["ray_call_ms"] = 1e3 * t["ray_call"].median
    rep.summary["zero0_minus_local_ms"] = 1e3 * (t["zero0"].median - t["zero0_local"].median)
    rep.summary["all_same_first_step"] = all(c["same"] for c in checks.values())
    rep.summary["ranks_identical"] = all(meta[k]["ranks_identical"] for k, _, r in LEARNERS if r > 1)
    rep.summary["skipped_steps"] = sum(bad.values())
    rep.summary["setup_local_s"] = res["setup_local_s"]
    rep.summary["setup_ray_groups_s"] = res["setup_groups_s"]
    rep.summary["driver_peak_rss"] = fmt_bytes(driver_rss)
    rep.summary["rounds"] = res["rounds"]
    rep.summary["noise"] = max(x.spread for x in t.values())
    rep.targets["zero0_vs_plain"] = "close to 1 (ZeRO-0 on 1 rank adds little)"
    for name, c in checks.items():
        if not c["same"]:
            rep.note(f"{name}: first step differs from the plain loop: |d loss| {c['loss_diff']:.3g}, grad norm "
                     f"relative {c['grad_norm_rel_diff']:.3g}, counts {'equal' if c['counts_ok'] else 'DIFFER'}")
    for name, _, ranks in LEARNERS:
        if ranks > 1 and not meta[name]["ranks_identical"]:
            rep.note(f"{name}: the ranks hold different weights after timing: {meta[name]['checksums']}")
    if bad:
        rep.note(f"steps not applied during timing (these candidates' timings are not like for like): {bad}")
    threads = sorted({x for k, _, r in LEARNERS if r > 0 for x in meta[k]["rank_torch_threads"]})
    rep.note(f"{os.cpu_count()} cores for everything: the driver, Ray, and up to 2 rank processes stepping at once "
             f"(torch threads per rank: {threads}; driver: {torch.get_num_threads()}); the 9 rank processes of the "
             "6 Ray candidates stay resident (idle) throughout")
    rep.note("ray_call = the batch to a 1-rank group's actor and back with no compute (split, serialisation, "
             "dispatch): compare with zero0_minus_local_ms, the time the Ray hop adds to a step")
    rep.note("zero3 on CPU without `accelerate`: every rank loads the full model, DeepSpeed partitions it at "
             "initialize (learner/deepspeed_learner.py falls back); setup only, not the step")
    rep.note("the driver's peak RSS covers the rollout worker that built the batch, the plain loop and zero0_local")
    rep.note("tiny model: absolute samples/s say nothing about a 7B model on GPU; the ratios are the figures")
    return rep.finish()


if __name__ == "__main__":
    main()
