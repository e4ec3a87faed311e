"""The LLM judge: core (batching, cache, retries, breaker), the OpenAI backend against a real local HTTP server,
the transformers backend with a tiny model built in code, the vLLM backend's missing-package error, the Ray actor."""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

from judge_http_stub import GOOD, KEY_ENV, SECRET, JudgeServer, completion

from actors.judge import create_judge_actor
from rewards.judge import CircuitBreaker, JudgeCore, JudgeOutcome, as_judge_config
from rewards.judge_backends import JudgeBackend, JudgeBackendUnavailable, JudgeCallError, make_backend
from rewards.config import JudgeConfig

REF = "The suction cannula, held by the surgeon's left hand, clears fluid near the incision."


@pytest.fixture
def server():
    s = JudgeServer()
    yield s
    s.close()


def http_cfg(url: str, **kw: Any) -> JudgeConfig:
    base = dict(backend="openai", model="judge-model", base_url=url, api_key_env=KEY_ENV, timeout_s=2.0,
                max_retries=2, backoff_s=0.01, batch_size=4, max_concurrency=4, breaker_failures=50,
                breaker_cooldown_s=30.0)
    base.update(kw)
    return JudgeConfig(**base)


# ------------------------------------------------------------------------------------ OpenAI over real HTTP

def test_openai_scores_caches_dedups_and_sends_the_key(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    core = JudgeCore(http_cfg(server.url))
    pairs = [(REF, "A suction tube removes fluid."), (REF, "Forceps grasp tissue."),
             (REF, "A suction tube removes fluid.")]
    out = core.score(pairs, hints="rc")
    assert [o.ok for o in out] == [True, True, True]
    assert out[0].score == pytest.approx(3.6) and out[0].reward == pytest.approx(0.65)
    assert out[0].dimensions["action_state"] == 2.0 and out[0].attempts == 1
    assert len(server.requests) == 2  # the duplicate pair was asked once
    headers, body = server.requests[0]
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert body["model"] == "judge-model" and body["temperature"] == 0.0 and body["max_tokens"] == 256
    assert body["messages"][0]["role"] == "system" and REF in body["messages"][1]["content"]
    again = core.score(pairs[:1], hints="rc")
    assert again[0].cached and again[0].score == pytest.approx(3.6) and len(server.requests) == 2
    assert core.score(pairs[:1], hints="vs")[0].cached is False  # the hint is part of the prompt, so of the key
    m = core.metrics()
    assert m["judge/requests"] == 5 and m["judge/calls"] == 3 and m["judge/cache_hits"] == 1
    assert m["judge/dedup_hits"] == 1 and m["judge/ok"] == 5 and m["judge/latency_max_s"] > 0
    core.close()


def test_the_key_never_leaks_into_repr_metrics_logs_or_details(server, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)

    def echo_auth(n: int, body: dict) -> tuple[int, Any, float]:  # a hostile server echoes the header back
        return 500, f"internal error, your header was {server.requests[n][0].get('Authorization')}", 0.0

    server.behavior = echo_auth
    core = JudgeCore(http_cfg(server.url, max_retries=0))
    out = core.score([(REF, "candidate")])
    assert out[0].reason == "http_5xx" and "***" in out[0].detail
    texts = [repr(core), repr(core.backend), str(core.metrics()), caplog.text, repr(out), str(core.cfg)]
    for t in texts:
        assert SECRET not in t
    core.close()


def test_slow_replies_time_out_and_are_retried(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.behavior = lambda n, body: (200, completion(GOOD), 1.5)
    core = JudgeCore(http_cfg(server.url, timeout_s=0.2, max_retries=1))
    t0 = time.monotonic()
    out = core.score([(REF, "slow one")])
    assert time.monotonic() - t0 < 1.2  # two 0.2 s timeouts, not two 1.5 s replies
    assert out[0].score is None and out[0].reason == "timeout" and out[0].attempts == 2
    m = core.metrics()
    assert m["judge/call_errors/timeout"] == 2 and m["judge/failures/timeout"] == 1 and m["judge/retries"] == 1
    core.close()


def test_500s_are_retried_with_exponential_backoff(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.behavior = lambda n, body: (500, {"error": "overloaded"}, 0.0) if n < 2 else (200, completion(GOOD), 0.0)
    core = JudgeCore(http_cfg(server.url, max_retries=2, backoff_s=0.1))
    t0 = time.monotonic()
    out = core.score([(REF, "needs retries")])
    elapsed = time.monotonic() - t0
    assert out[0].ok and out[0].attempts == 3 and len(server.requests) == 3
    assert elapsed >= 0.1 + 0.2  # backoff 0.1 s then 0.2 s (plus jitter)
    m = core.metrics()
    assert m["judge/call_errors/http_5xx"] == 2 and m["judge/retries"] == 2 and "judge/failures/http_5xx" not in m
    core.close()


def test_garbage_replies_are_counted_parse_failures_not_zeros(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    replies = ["I am unable to evaluate surgical captions.", "<html>502 Bad Gateway</html>"]
    server.behavior = lambda n, body: (200, completion(replies[n % 2]), 0.0)
    core = JudgeCore(http_cfg(server.url, max_retries=1))
    out = core.score([(REF, "candidate a")])
    assert out[0].score is None and out[0].reward is None and out[0].reason == "parse_no_scores"
    assert out[0].attempts == 2  # an HTTP judge samples: one more try
    m = core.metrics()
    assert m["judge/failures/parse_no_scores"] == 1 and m["judge/call_errors/parse_no_scores"] == 2
    assert m["judge/missing"] == 1 and m["judge/cache_size"] == 0  # failures are not cached
    # malformed response bodies and null content are distinct reasons
    server.behavior = lambda n, body: (200, "{not json", 0.0)
    assert core.score([(REF, "candidate b")])[0].reason == "bad_response"
    server.behavior = lambda n, body: (200, completion(None), 0.0)
    assert core.score([(REF, "candidate c")])[0].reason == "parse_empty"
    core.close()


def test_client_errors_are_not_retried_and_refused_connections_are_reported(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.behavior = lambda n, body: (401, {"error": "bad key"}, 0.0)
    core = JudgeCore(http_cfg(server.url, max_retries=3))
    out = core.score([(REF, "x")])
    assert out[0].reason == "http_4xx" and out[0].attempts == 1 and len(server.requests) == 1
    core.close()
    port = server.httpd.server_address[1]
    server.close()
    dead = JudgeCore(http_cfg(f"http://127.0.0.1:{port}/v1", max_retries=0))
    assert dead.score([(REF, "x")])[0].reason == "connection_error"
    dead.close()


def test_breaker_opens_over_http_and_recovers(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    healthy = threading.Event()
    server.behavior = lambda n, body: (200, completion(GOOD), 0.0) if healthy.is_set() else (503, "down", 0.0)
    core = JudgeCore(http_cfg(server.url, max_retries=0, batch_size=1, breaker_failures=3, breaker_cooldown_s=0.3))
    out = core.score([(REF, f"cand {i}") for i in range(6)])
    assert [o.reason for o in out] == ["http_5xx"] * 3 + ["circuit_open"] * 3
    assert len(server.requests) == 3  # no call while open
    assert core.metrics()["judge/breaker_open"] == 1.0 and core.metrics()["judge/breaker_trips"] == 1
    healthy.set()
    time.sleep(0.35)
    out = core.score([(REF, f"cand {i}") for i in range(3)])
    assert all(o.ok for o in out) and core.metrics()["judge/breaker_open"] == 0.0
    core.close()


# ------------------------------------------------------------------------------- core with a scripted backend

class Scripted(JudgeBackend):
    name = "scripted"
    thread_safe = True

    def __init__(self, script: Callable[[int, str], Any], deterministic: bool = False) -> None:
        self.script = script
        self.deterministic = deterministic
        self.batches: list[int] = []
        self.n = 0

    def complete(self, conversations):
        self.batches.append(len(conversations))
        out = []
        for c in conversations:
            out.append(self.script(self.n, c[1]["content"]))
            self.n += 1
        return out


def core_cfg(**kw: Any) -> JudgeConfig:
    base = dict(backend="openai", model="m", max_retries=2, backoff_s=1.0, batch_size=3, breaker_failures=2,
                breaker_cooldown_s=10.0)
    base.update(kw)
    return JudgeConfig(**base)


def test_batching_input_checks_and_empty_candidates():
    be = Scripted(lambda n, c: GOOD)
    core = JudgeCore(core_cfg(), backend=be)
    pairs = [(REF, f"c{i}") for i in range(7)]
    out = core.score(pairs + [(REF, "  "), ("", "c"), ("only one",), (REF, 3)])  # type: ignore[list-item]
    assert be.batches == [3, 3, 1]
    assert all(o.ok for o in out[:7])
    assert out[7].ok and out[7].score == 1.0 and out[7].reward == 0.0 and out[7].attempts == 0  # empty: lowest
    assert [o.reason for o in out[8:]] == ["no_reference", "bad_input", "bad_input"]
    assert core.metrics()["judge/empty_candidates"] == 1
    with pytest.raises(ValueError):
        core.score(pairs, hints=["rc"])
    with pytest.raises(ValueError, match="hints"):
        core.score(pairs[:1], hints=[3])  # type: ignore[list-item]


def test_backoff_doubles_and_deterministic_backends_do_not_reask_garbage():
    sleeps: list[float] = []
    be = Scripted(lambda n, c: JudgeCallError("http_5xx", "busy") if n < 2 else GOOD)
    core = JudgeCore(core_cfg(breaker_failures=10), backend=be, sleep=sleeps.append, seed=0)
    assert core.score([(REF, "c")])[0].attempts == 3
    assert len(sleeps) == 2 and 1.0 <= sleeps[0] <= 1.25 and 2.0 <= sleeps[1] <= 2.5
    greedy = Scripted(lambda n, c: "no idea", deterministic=True)
    core2 = JudgeCore(core_cfg(), backend=greedy, sleep=sleeps.append)
    out = core2.score([(REF, "c")])
    assert out[0].reason == "parse_no_scores" and out[0].attempts == 1 and greedy.n == 1


def test_breaker_half_open_probe_with_a_fake_clock():
    now = [0.0]
    healthy = [False]
    be = Scripted(lambda n, c: GOOD if healthy[0] else JudgeCallError("timeout", "slow"))
    core = JudgeCore(core_cfg(max_retries=0, batch_size=8), backend=be, clock=lambda: now[0], sleep=lambda s: None)
    out = core.score([(REF, f"a{i}") for i in range(4)])
    assert [o.reason for o in out] == ["timeout"] * 4  # one batch in flight: all four were sent
    out = core.score([(REF, "b")])
    assert out[0].reason == "circuit_open" and "10.0s" in out[0].detail and be.n == 4
    now[0] = 10.0  # cooldown over: one probe, which fails -> open again, the rest are not sent
    out = core.score([(REF, f"c{i}") for i in range(3)])
    assert [o.reason for o in out] == ["timeout", "circuit_open", "circuit_open"] and be.batches[-1] == 1
    assert core.breaker.trips == 2
    now[0] = 20.0
    healthy[0] = True  # probe succeeds -> closed -> the rest go out together
    out = core.score([(REF, f"d{i}") for i in range(3)])
    assert all(o.ok for o in out) and be.batches[-2:] == [1, 2] and core.breaker.state == "closed"


def test_non_breaker_failures_do_not_open_the_circuit():
    br = CircuitBreaker(2, 5.0, clock=lambda: 0.0)
    br.record(False)
    br.record(True)
    br.record(False)
    assert br.state == "closed"
    br.record(False)
    assert br.state == "open" and br.acquire() == "open"


def test_alignment_verdicts():
    be = Scripted(lambda n, c: '{"aligned": 1}' if "liver" in c else '{"aligned": 0}')
    core = JudgeCore(core_cfg(), backend=be)
    out = core.align([("Which organ?", "<think>It is the liver.</think><answer>A</answer>", "A"),
                      ("Which organ?", "<think>It is a banana.</think><answer>C</answer>", None),
                      ("Which organ?", "   ", None), ("bad",)])  # type: ignore[list-item]
    assert [o.score for o in out[:3]] == [1.0, 0.0, 0.0] and out[2].attempts == 0
    assert out[3].reason == "bad_input"


def test_config_forms_and_unavailable_backends(monkeypatch):
    from omegaconf import OmegaConf

    jc = as_judge_config({"backend": "openai", "model": "m"})
    assert isinstance(jc, JudgeConfig) and jc.model == "m"
    assert as_judge_config(OmegaConf.structured(JudgeConfig(model="z"))).model == "z"
    with pytest.raises(JudgeBackendUnavailable, match="none"):
        make_backend(JudgeConfig(backend="none"))
    with pytest.raises(JudgeBackendUnavailable, match="judge.model"):
        make_backend(JudgeConfig(backend="openai", model=""))
    with pytest.raises(JudgeBackendUnavailable, match="locally"):
        make_backend(JudgeConfig(backend="hf", model="/nonexistent/judge"))


def test_vllm_backend_without_vllm_raises_a_clear_error():
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed here")
    with pytest.raises(JudgeBackendUnavailable, match=r"vllm package.*medgrpo\[gpu\]"):
        JudgeCore(JudgeConfig(backend="vllm", model="some/judge"))


# ---------------------------------------------------------------------------------- transformers backend (hf)

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A random 1-layer Qwen2 causal LM with a byte-level BPE tokenizer and a chat template, saved to disk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([GOOD, REF, "reference candidate terminology specificity"] * 5, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    cfg = Qwen2Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    path = tmp_path_factory.mktemp("tiny_judge")
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


def test_hf_backend_garbage_is_a_counted_parse_failure(tiny_lm):
    core = JudgeCore(JudgeConfig(backend="hf", model=tiny_lm, max_new_tokens=12, max_retries=2, batch_size=2))
    out = core.score([(REF, "suction clears fluid"), (REF, "forceps retract"), (REF, "scissors cut")])
    assert all(o.score is None and o.reason.startswith("parse_") for o in out)
    assert all(o.attempts == 1 for o in out)  # greedy: re-asking would give the same garbage
    m = core.metrics()
    assert m["judge/calls"] == 3 and m["judge/missing"] == 3 and m.get("judge/retries", 0) == 0
    assert sum(v for k, v in m.items() if k.startswith("judge/failures/parse_")) == 3


def test_hf_backend_parse_path_with_patched_generation(tiny_lm, monkeypatch):
    import torch

    core = JudgeCore(JudgeConfig(backend="hf", model=tiny_lm, max_new_tokens=64, batch_size=4))
    backend = core.backend
    tok = backend.tokenizer
    reply = tok(GOOD + "<|im_end|>", add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    seen: dict[str, Any] = {}

    def fake_generate(input_ids, attention_mask=None, **kw):
        seen.update(kw, shape=tuple(input_ids.shape), left_pad=bool((attention_mask[:, 0] == 0).any()))
        return torch.cat([input_ids, reply.unsqueeze(0).expand(input_ids.shape[0], -1)], dim=1)

    monkeypatch.setattr(backend.model, "generate", fake_generate)
    out = core.score([(REF, "short"), (REF, "a much longer candidate caption with many more words in it")])
    assert all(o.ok for o in out) and out[1].score == pytest.approx(3.6)
    assert seen["do_sample"] is False and seen["max_new_tokens"] == 64 and seen["shape"][0] == 2
    assert seen["left_pad"]  # the shorter prompt is padded on the left for generation


# -------------------------------------------------------------------------------------------- the Ray actor

@pytest.mark.ray
def test_judge_actor_on_local_ray(ray_local, server):
    cfg = http_cfg(server.url, max_retries=0)
    actor = create_judge_actor(cfg, runtime_env={"env_vars": {KEY_ENV: SECRET}})
    try:
        assert ray_local.get(actor.ping.remote(), timeout=60) == "openai"
        out = ray_local.get(actor.score.remote([(REF, "a"), (REF, "b")], "rc"), timeout=60)
        assert all(isinstance(o, JudgeOutcome) and o.ok for o in out)
        assert out[0].reward == pytest.approx(0.65)
        assert server.requests[0][0]["Authorization"] == f"Bearer {SECRET}"
        # several reward workers call at once: the threaded actor serves them concurrently
        server.behavior = lambda n, body: (200, completion(GOOD), 0.5)
        t0 = time.monotonic()
        refs = [actor.score.remote([(REF, f"concurrent {i}")]) for i in range(4)]
        assert all(o[0].ok for o in ray_local.get(refs, timeout=60))
        assert time.monotonic() - t0 < 1.5  # 4 x 0.5 s would be 2 s serially
        m = ray_local.get(actor.metrics.remote(), timeout=60)
        assert m["judge/ok"] == 6 and SECRET not in str(m)
    finally:
        ray_local.kill(actor)
