"""GPU acceptance check, one GPU, ≤ 8 minutes: the paths the CPU suite cannot run on CUDA, with their figures.

Needs only torch, transformers, DeepSpeed (a wheel built without ops is enough), safetensors and the project's
small pure-Python dependencies (numpy, pillow, omegaconf): no Ray, no vLLM, no network. On a machine with the repo:

    python -m bench.gpu_acceptance --out bench/results_gpu_acceptance.json     # CUDA, bf16, ~0.5B model
    python -m bench.gpu_acceptance --cpu --out /tmp/smoke.json                  # CPU smoke (tiny sizes, fp32)

What it does (every check lands in one JSON, ``ok`` false if any failed; the exit status is 1 then):

1. builds a randomly initialised Qwen2.5-VL in code (``data.tiny_model.build_tiny_model``: the official classes
   and files; by default ~0.45B parameters, text head size 64, vision head size 80 as in the 7B) into a temp folder;
2. the hf rollout backend (``actors.rollout_backends.HFBackend``) in bf16 on CUDA: text, image and video prompts,
   G samples each, in one batched ``generate``; generated tokens/s;
3. the DeepSpeed learner (``learner.deepspeed_learner.DeepSpeedLearner``), bf16, NCCL process group of world 1, at
   ZeRO-0 and then ZeRO-3: the behaviour log-probs against the learner's recomputation (max |diff|, recorded; bf16
   so a loose bound), one GRPO train step (finite loss, trained weights changed, the frozen vision tower unchanged);
4. weight sync: ``weight_payload`` (pack) → ``WeightReceiver.apply`` into the rollout model, the checksum
   recomputed on the receiving side equal to the sender's; the bucketed broadcast (``BucketBroadcaster``) of the
   learner's weights on CUDA over a world-1 NCCL group (one GPU: the receiving side needs a second GPU), seconds;
5. peak CUDA memory (``torch.cuda.max_memory_allocated``) and wall time of each part.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GPU_SIZES = dict(vocab_size=2048, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vision_hidden_size=640, vision_depth=8,
                 vision_num_heads=8, vision_intermediate_size=2560, max_position_embeddings=8192)
CPU_SIZES = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, vision_hidden_size=160, vision_depth=2, vision_num_heads=2,
                 vision_intermediate_size=320)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prompts(processor: Any, pixels: int, frames: int) -> list[dict[str, Any]]:
    """Encoded text, image and video prompts (random pixels, seeded)."""
    import numpy as np
    from PIL import Image

    from learner.model_io import build_inputs

    rng = np.random.default_rng(0)
    side = int(pixels ** 0.5) // 28 * 28
    image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    video = rng.integers(0, 255, (frames, side, side, 3), dtype=np.uint8)
    kw = dict(min_pixels=4 * 28 * 28, max_pixels=pixels)
    return [dict(build_inputs(processor, "Describe the findings in one sentence.", **kw)),
            dict(build_inputs(processor, "Which instrument is visible?", image=image, **kw)),
            dict(build_inputs(processor, "When does the clipping happen?", frames=video, fps=1.0, **kw))]


def run(cpu: bool, group: int = 4, max_new_tokens: int = 64) -> dict[str, Any]:
    import torch

    from actors.rollout_backends import HFBackend
    from cluster.config import load_config
    from learner.deepspeed_learner import DeepSpeedLearner, build_policy_batch
    from data.tiny_model import build_tiny_model
    from learner.weight_sync import BucketBroadcaster, WeightReceiver, init_sync_group, weights_checksum

    device = "cpu" if cpu else "cuda"
    dtype = "float32" if cpu else "bfloat16"
    out: dict[str, Any] = {"device": device if cpu else torch.cuda.get_device_name(0), "dtype": dtype,
                           "torch": torch.__version__, "checks": {}, "seconds": {}}
    checks = out["checks"]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medgrpo-gpu-acceptance-") as tmp:
        t0 = time.perf_counter()
        sizes = CPU_SIZES if cpu else GPU_SIZES
        path = build_tiny_model(Path(tmp) / "model", seed=0, **sizes)
        out["seconds"]["build_model"] = round(time.perf_counter() - t0, 2)

        # -- rollout (hf backend) ---------------------------------------------------------------------------
        backend = HFBackend(str(path), dtype=dtype, device=device)
        params = sum(p.numel() for p in backend.model.parameters())
        cfg = backend.model.config
        out["model"] = {"parameters": params, "text_head_size": cfg.text_config.hidden_size
                        // cfg.text_config.num_attention_heads,
                        "vision_head_size": cfg.vision_config.hidden_size // cfg.vision_config.num_heads}
        prompts = _prompts(backend.processor, 112 * 112 if cpu else 448 * 448, 4 if cpu else 16)
        if not cpu:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        groups_raw = backend.generate_batch(prompts, group, max_new_tokens=max_new_tokens, temperature=1.0,
                                            top_p=1.0, seed=0)
        gen_s = time.perf_counter() - t0
        tokens = sum(len(c.response_ids) for g in groups_raw for c in g)
        out["rollout"] = {"prompts": len(prompts), "group_size": group, "generated_tokens": tokens,
                          "seconds": round(gen_s, 3), "tokens_per_s": round(tokens / gen_s, 1)}
        checks["rollout_groups"] = all(len(g) == group for g in groups_raw) and tokens > 0

        from learner.experience import PromptGroup

        groups = [PromptGroup(instance_id=f"p{i}", qa_type="vqa", data_source="gpu", prompt_ids=p["input_ids"][0]
                              .tolist(), mm_inputs={k: v for k, v in p.items()
                                                    if k not in ("input_ids", "attention_mask")},
                              completions=g, policy_version=0, temperature=1.0)
                  for i, (p, g) in enumerate(zip(prompts, groups_raw))]
        adv = [[1.0, -1.0] * (group // 2) + [0.0] * (group % 2) for _ in groups]
        batch = build_policy_batch(groups, adv)

        # -- learner at ZeRO-0 and ZeRO-3 -------------------------------------------------------------------
        for stage in (0, 3):
            key = f"zero{stage}"
            t0 = time.perf_counter()
            lcfg = load_config(None, [f"model.path={path}", f"model.dtype={dtype}", f"learner.bf16={not cpu}",
                                      f"learner.zero_stage={stage}", "learner.lr=1e-4", "learner.micro_batch_size=4",
                                      "model.freeze_vision_tower=true",
                                      f"learner.backend={'gloo' if cpu else 'nccl'}"])
            lrn = DeepSpeedLearner(lcfg, rank=0, world_size=1, master_port=_port())
            lrn.setup()
            try:
                new = lrn.compute_logprobs(batch)
                mask = batch["response_mask"].bool()
                diff = float((new[mask] - batch["old_logprobs"][mask]).abs().max())
                _, before = lrn.state_for_sync()
                vision_before = weights_checksum({n: t for n, t in before.items() if ".visual." in f".{n}"}, "full")
                text_before = weights_checksum({n: t for n, t in before.items() if ".visual." not in f".{n}"},
                                               "full")
                metrics = lrn.train_step(batch)
                payload = lrn.weight_payload()
                after = dict(payload.named_tensors())
                vision_after = weights_checksum({n: t for n, t in after.items() if ".visual." in f".{n}"}, "full")
                text_after = weights_checksum({n: t for n, t in after.items() if ".visual." not in f".{n}"}, "full")
                rec = {"logprob_max_abs_diff": diff, "loss": metrics["loss"],
                       "skipped_nonfinite": metrics["skipped_nonfinite"]}
                checks[f"{key}_logprob_agreement"] = diff < (1e-3 if cpu else 0.25)
                checks[f"{key}_loss_finite"] = bool(torch.isfinite(torch.tensor(metrics["loss"]))) and \
                    metrics["skipped_nonfinite"] == 0
                checks[f"{key}_weights_changed"] = text_after != text_before
                checks[f"{key}_frozen_tower_unchanged"] = vision_after == vision_before
                # pack -> apply into the rollout copy; the checksum recomputed on the receiving side
                t1 = time.perf_counter()
                version = WeightReceiver(version=-1).apply(backend.model, payload)
                rec["apply_s"] = round(time.perf_counter() - t1, 3)
                model_dtype = next(backend.model.parameters()).dtype
                sent = weights_checksum({n: t.to(model_dtype) for n, t in after.items()})
                checks[f"{key}_pack_apply_checksum"] = version == payload.version and \
                    weights_checksum(backend.model) == sent
                rec["payload_bytes"] = payload.nbytes
                if stage == 0:  # bucketed broadcast on the learner's device, world 1 (one GPU)
                    t1 = time.perf_counter()
                    grp = init_sync_group("127.0.0.1", _port(), 0, 1, backend="gloo" if cpu else "nccl")
                    plan = BucketBroadcaster(grp, 0).broadcast(lrn.model, lrn.version)
                    if not cpu:
                        torch.cuda.synchronize()
                    rec["broadcast_s"] = round(time.perf_counter() - t1, 3)
                    rec["broadcast_buckets"] = len(plan)
                    checks["broadcast_on_device"] = len(plan) >= 1
            finally:
                lrn.shutdown()
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            out[key] = rec
        if not cpu:
            out["peak_cuda_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    out["seconds"]["total"] = round(time.perf_counter() - t_all, 1)
    out["ok"] = all(checks.values())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="smoke mode: tiny sizes, fp32, CPU, gloo")
    ap.add_argument("--out", default="bench/results_gpu_acceptance.json")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    if args.cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    rec = run(args.cpu, group=args.group, max_new_tokens=args.max_new_tokens)
    Path(args.out).write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps(rec, indent=1))
    return 0 if rec["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
