"""Benchmark: hf rollout with all prompts in one batched ``generate`` vs one ``generate`` per prompt (tiny Qwen2.5-VL).

``RolloutWorker.generate(..., batched=True)`` (one ``model.generate`` over prompts x G rows) against
``batched=False`` (one call of G rows per prompt), same worker, same MP4 prompts, sampling at temperature 1,
interleaved rounds (``bench.common.compare``). Both include video decode and prompt encoding. The two paths draw
different random streams, so response lengths differ a little: samples/s and generated tokens/s are both shown,
and the headline ratio is of tokens/s (per-round medians).

``--vllm`` adds a third candidate on a GPU machine: ``RolloutWorker(backend="vllm")`` on the same checkpoint and
prompts (vLLM's ``n = G`` sampling with log-probs; ``--vllm-memory`` is its ``gpu_memory_utilization``), with
``--device cuda --dtype bfloat16`` for the hf candidates so both engines run on the GPU. Where vLLM cannot be
imported (every CPU machine) the record says ``vllm: skipped`` with the reason and the hf figures stand.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from bench.common import Report, compare, fmt_num, parser, require_groups, synth_tiny_model


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = parser("rollout_batch", __doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=4, help="prompts per generate call (default 4)")
    ap.add_argument("--group", type=int, default=4, help="samples per prompt, G (default 4)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="default 32")
    ap.add_argument("--device", default=None, help="hf backend device (default: cuda when available, else cpu)")
    ap.add_argument("--dtype", default=None, help="hf backend dtype (default: bfloat16 on cuda, float32 on cpu)")
    ap.add_argument("--vllm", action="store_true", help="add the vllm backend as a candidate (GPU machines)")
    ap.add_argument("--vllm-memory", type=float, default=0.3, help="vLLM gpu_memory_utilization (default 0.3)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rep = Report("rollout_batch", args, uses_torch=True)
    rounds, min_time = (3, 0.5) if args.quick else (7, 2.0)

    import torch

    from actors.rollout import RolloutWorker

    with tempfile.TemporaryDirectory(prefix="bench-rollout-batch-") as tmp:
        instances, model_path = synth_tiny_model(Path(tmp), args.seed)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        rep.note(f"hf backend on {device}, {dtype}")
        worker = RolloutWorker(model_path, device=device, dtype=dtype)
        workers = {"batched": worker, "per_prompt": worker}
        if args.vllm:
            try:
                import vllm  # noqa: F401
            except ImportError as e:
                rep.note(f"vllm: skipped ({type(e).__name__}: {e})")
                rep.summary["vllm"] = "skipped"
            else:
                workers["vllm"] = RolloutWorker(model_path, backend="vllm", dtype=dtype, vllm_kwargs=dict(
                    gpu_memory_utilization=args.vllm_memory, seed=args.seed, max_model_len=4096))
        video = [i for i in instances if isinstance(i.video, str)][: args.prompts]
        if len(video) < args.prompts:
            raise RuntimeError(f"synthetic data has only {len(video)} MP4 prompts, need {args.prompts}")
        counts: dict[str, list[tuple[int, int]]] = {name: [] for name in workers}

        def run(name: str) -> None:
            groups = require_groups(workers[name].generate(
                video, args.group, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=len(counts[name]),
                batched=name != "per_prompt"), f"{name} prompts")
            comps = [c for g in groups for c in g.completions]
            counts[name].append((len(comps), sum(len(c.response_ids) for c in comps)))

        timings = compare({name: (lambda n=name: run(n)) for name in workers}, rounds=rounds, min_time=min_time)
        rows = []
        for name, t in timings.items():
            samples = sum(s for s, _ in counts[name]) / len(counts[name])
            tokens = sum(k for _, k in counts[name]) / len(counts[name])
            rows.append({"path": name, "s_per_call": t.median, "spread": t.spread, "samples_per_s": samples / t.median,
                         "tokens_per_s": tokens / t.median, "mean_response_tokens": tokens / samples,
                         "calls": t.calls})
        rep.table("rollout_batch", f"hf rollout, {args.prompts} prompts x G={args.group}, {args.max_new_tokens} new "
                  f"tokens, sampling T=1 (medians over {rounds} interleaved rounds)", rows,
                  [(k, k.replace("_", " "), fmt_num) for k in ("path", "s_per_call", "spread", "samples_per_s",
                                                                "tokens_per_s", "mean_response_tokens", "calls")])
        by = {r["path"]: r for r in rows}
        for unit in ("samples_per_s", "tokens_per_s"):
            rep.summary[f"batched_vs_per_prompt_{unit}"] = by["batched"][unit] / by["per_prompt"][unit]
            if "vllm" in by:
                rep.summary[f"vllm_vs_batched_{unit}"] = by["vllm"][unit] / by["batched"][unit]
    return rep.finish()


if __name__ == "__main__":
    main()
