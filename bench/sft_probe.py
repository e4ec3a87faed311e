"""SFT probe: in-process SFT (no Ray) of a fresh tiny Qwen2.5-VL on some tasks of a synthetic MedVidBench folder,
greedy eval on its eval rows every ``--every`` steps against the constant baselines (``rewards.baselines``).

For sizing the tiny model and for the blind control: run it on ``generate(..., blind=True)`` data with the same
arguments and compare. ``python -m bench.sft_probe --data DIR --tasks next_action --steps 200 --sizes '{}'``.

Besides greedy accuracy, every eval prints ``nll``: per task, the mean over eval rows of the teacher-forced negative
log-likelihood of the whole reference answer (nats). Once the answer's template is learnt (its tokens cost ~0) this is
what the class-carrying tokens cost: about ln(#classes) for a model that guesses from the text, less for one that
reads the class off the frames. It moves before greedy accuracy does and is not quantised by a small eval set (a
training loss of ~0.1 per token can hide class tokens at chance).
"""
import argparse
import json
import random
import time

import torch
from actors.rollout import RolloutWorker
from cluster.config import load_config
from data.reader import read_instances
from learner.deepspeed_learner import DeepSpeedLearner, build_sft_batch
from data.tiny_model import build_tiny_model, corpus_of
from rewards.leaderboard import evaluate
from rewards.baselines import baseline_table

ap = argparse.ArgumentParser()
ap.add_argument('--data'); ap.add_argument('--tasks', default='next_action')
ap.add_argument('--steps', type=int, default=200); ap.add_argument('--batch', type=int, default=16)
ap.add_argument('--lr', type=float, default=3e-3); ap.add_argument('--sizes', default='{}')
ap.add_argument('--model', default='runs/probe-model'); ap.add_argument('--every', type=int, default=50)
ap.add_argument('--frames', type=int, default=8); ap.add_argument('--port', type=int, default=29700)
ap.add_argument('--corpus', default=None); ap.add_argument('--max-new-tokens', type=int, default=64)
ap.add_argument('--max-pixels', type=int, default=12544); ap.add_argument('--seed', type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(2)
tasks = a.tasks.split(',')
tr = [i for i in read_instances(f'{a.data}/train.jsonl').instances if i.qa_type in tasks]
ev = [i for i in read_instances(f'{a.data}/eval.jsonl').instances if i.qa_type in tasks]
corpus_dir = a.corpus or a.data
corpus = corpus_of([f'{corpus_dir}/train.jsonl', f'{corpus_dir}/eval.jsonl'])
t0 = time.time()
build_tiny_model(a.model, corpus_texts=corpus, seed=a.seed, **json.loads(a.sizes))
info = json.load(open(f'{a.model}/medgrpo_tiny.json'))
print('params', info['parameters'], flush=True)
w = RolloutWorker(a.model, max_frames=a.frames, max_pixels=a.max_pixels, min_pixels=3136)
ex = [e for e in w.encode_sft(tr) if isinstance(e, dict)]
ev_ex = [e for e in w.encode_sft(ev) if isinstance(e, dict)]
task_of = {i.uid: i.qa_type for i in ev}
print('encoded', len(ex), 'train', len(ev), 'eval', f'{time.time()-t0:.0f}s', flush=True)
base = baseline_table(tr, ev)
cols = [c for c in base['table'] if base['table'][c] is not None]
print('baseline', {c: round(base['table'][c], 3) for c in cols}, flush=True)
cfg = load_config('cpu_demo', [f'model.path={a.model}', f'learner.lr={a.lr}', 'learner.micro_batch_size=16'])
lrn = DeepSpeedLearner(cfg, rank=0, world_size=1, master_port=a.port)
lrn.setup()
rng = random.Random(a.seed)
def answer_nll():
    """Mean teacher-forced NLL of the reference answer per task (nats per answer)."""
    per: dict = {}
    for k in range(0, len(ev_ex), 16):
        chunk = ev_ex[k:k + 16]
        b = build_sft_batch(chunk)
        lp = lrn.compute_logprobs(b)
        for r, e in enumerate(chunk):
            nll = -float((lp[r] * (b['labels'][r] != -100)).sum())
            per.setdefault(task_of[e['instance_id']], []).append(nll)
    return {t: round(sum(v) / len(v), 3) for t, v in sorted(per.items())}
def ev_once(step):
    print(f'step {step} nll', answer_nll(), flush=True)
    w.apply_weights(lrn.weight_payload())
    outs = w.generate(ev, 1, max_new_tokens=a.max_new_tokens, temperature=0.0)
    preds = {g.instance_id: g.completions[0].text for g in outs if hasattr(g, 'completions')}
    r = evaluate(ev, preds)
    print(f'step {step} t={time.time()-t0:.0f}s', {c: round(r['table'][c], 3) for c in cols}, flush=True)
    return r
losses = []
for s in range(1, a.steps + 1):
    batch = rng.sample(ex, min(a.batch, len(ex)))
    losses.append(lrn.sft_step(build_sft_batch(batch))['loss'])
    if s % 10 == 0:
        print(f'  step {s} loss {sum(losses[-10:])/10:.3f} t={time.time()-t0:.0f}s', flush=True)
    if s % a.every == 0:
        ev_once(s)
lrn.shutdown()
