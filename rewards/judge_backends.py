"""Judge backends behind one interface: an OpenAI-compatible HTTP endpoint, vLLM on GPU, transformers on CPU/GPU.

A backend turns a batch of chat conversations into reply texts, one entry per conversation: the text, or a
``JudgeCallError`` carrying a stable reason code. It does not retry, cache or parse: that is ``JudgeCore``'s job
(rewards/judge.py). Backends hold no Ray state and can be used in any process.

Secrets: the OpenAI backend reads its API key only from the environment variable named by
``JudgeConfig.api_key_env``, keeps it out of ``repr``, and redacts it from every error detail it produces.
"""
from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence, Union

from rewards.config import JudgeConfig

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class JudgeCallError(Exception):
    """One failed judge call. ``reason`` is a stable code (metric name); ``detail`` is for humans.

    ``retryable``: another attempt may succeed (timeouts, 5xx, 429). ``breaker``: the failure says the endpoint is
    unhealthy and counts toward the circuit breaker (a 400 for one over-long request does not).
    """

    def __init__(self, reason: str, detail: str = "", *, retryable: bool = True, breaker: bool = True) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.breaker = breaker


class JudgeBackendUnavailable(RuntimeError):
    """The backend cannot be constructed here (missing package, missing model files, bad settings)."""


Reply = Union[str, JudgeCallError]


class JudgeBackend(ABC):
    name: str = "?"
    #: Greedy decoding: the same prompt gives the same reply, so re-asking after an unparseable reply is pointless.
    deterministic: bool = False
    #: ``complete`` may be called from several threads at once.
    thread_safe: bool = False

    @abstractmethod
    def complete(self, conversations: Sequence[Messages]) -> list[Reply]:
        """One reply (text or ``JudgeCallError``) per conversation, in order. Must not raise for a call failure."""

    def close(self) -> None:
        """Release connections / models."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# ----------------------------------------------------------------------------------------------------- OpenAI

class OpenAIBackend(JudgeBackend):
    """Any OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint (OpenAI, a vLLM server, ...), via httpx.

    Requests of one batch run concurrently on up to ``max_concurrency`` threads; each has ``timeout_s``.
    """

    name = "openai"
    thread_safe = True

    def __init__(self, cfg: JudgeConfig, *, transport: Any = None) -> None:
        import httpx

        if not cfg.model:
            raise JudgeBackendUnavailable("judge.model must name the model the endpoint serves (backend 'openai')")
        if not cfg.base_url.startswith(("http://", "https://")):
            raise JudgeBackendUnavailable(f"judge.base_url={cfg.base_url!r} must start with http:// or https://")
        self._httpx = httpx
        self.model = cfg.model
        self.base_url = cfg.base_url.rstrip("/")
        self.max_new_tokens = cfg.max_new_tokens
        self.timeout_s = cfg.timeout_s
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self._secrets = tuple(s for s in (key,) if s)
        if not key:
            log.warning("judge: environment variable %r is not set; calling %s without an Authorization header",
                        cfg.api_key_env, self.base_url)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=self.base_url + "/", headers=headers, transport=transport,
                                    timeout=httpx.Timeout(cfg.timeout_s),
                                    limits=httpx.Limits(max_connections=cfg.max_concurrency))
        self._pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="judge-http")

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r})"

    def _redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _one(self, messages: Messages) -> Reply:
        httpx = self._httpx
        payload = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": self.max_new_tokens}
        try:
            resp = self._client.post("chat/completions", json=payload)
        except httpx.TimeoutException as e:
            return JudgeCallError("timeout", f"no reply within {self.timeout_s:g}s ({type(e).__name__})")
        except httpx.HTTPError as e:  # connection refused/reset, protocol errors
            return JudgeCallError("connection_error", self._redact(f"{type(e).__name__}: {e}")[:200])
        status = resp.status_code
        if status != 200:
            body = self._redact(resp.text[:200])
            if status == 429:
                return JudgeCallError("http_429", f"rate limited: {body}")
            if status >= 500:
                return JudgeCallError("http_5xx", f"HTTP {status}: {body}")
            request_specific = status in (400, 413, 422)
            return JudgeCallError("http_4xx", f"HTTP {status}: {body}", retryable=False, breaker=not request_specific)
        try:
            data = resp.json()
            content = data["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            return JudgeCallError("bad_response", self._redact(f"{type(e).__name__}: {resp.text[:120]!r}"))
        if content is not None and not isinstance(content, str):
            return JudgeCallError("bad_response", f"message content is {type(content).__name__}, not text")
        return content or ""  # None (refusal, tool call) is an empty reply: the parser counts it

    def complete(self, conversations: Sequence[Messages]) -> list[Reply]:
        if len(conversations) <= 1:
            return [self._one(c) for c in conversations]
        return list(self._pool.map(self._one, conversations))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


# ------------------------------------------------------------------------------------------- transformers (hf)

class HFBackend(JudgeBackend):
    """A transformers causal LM loaded inside the judge process; greedy decoding with the tokenizer's chat template.

    ``cfg.model`` is a local checkpoint directory (or a model already in the local HF cache); hubs are not
    contacted. GPU when ``cfg.num_gpus > 0`` and CUDA is available, else CPU (float32). ``timeout_s`` bounds
    each generate call (transformers ``max_time``); a batch that hits it is reported as ``timeout``.
    """

    name = "hf"
    deterministic = True

    def __init__(self, cfg: JudgeConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not cfg.model:
            raise JudgeBackendUnavailable("judge.model must be a local checkpoint directory (backend 'hf')")
        self.model_path = cfg.model
        self.batch_size = cfg.batch_size
        self.max_new_tokens = cfg.max_new_tokens
        self.timeout_s = cfg.timeout_s
        self.device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(cfg.model, local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as e:
            raise JudgeBackendUnavailable(f"cannot load judge model {cfg.model!r} locally "
                                          f"(backend 'hf', no hub access): {e}") from e
        if not getattr(self.tokenizer, "chat_template", None):
            raise JudgeBackendUnavailable(f"the tokenizer of judge model {cfg.model!r} has no chat_template")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(self.device).eval()
        self._torch = torch

    def __repr__(self) -> str:
        return f"HFBackend(model={self.model_path!r}, device={self.device!r})"

    def _generate(self, conversations: Sequence[Messages]) -> list[Reply]:
        tok = self.tokenizer
        prompts = [tok.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False) for c in conversations]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        start = time.monotonic()
        with self._torch.inference_mode():
            out = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                      max_time=self.timeout_s, pad_token_id=tok.pad_token_id)
        if time.monotonic() - start >= self.timeout_s:
            err = JudgeCallError("timeout", f"generate stopped at max_time={self.timeout_s:g}s", retryable=False)
            return [err] * len(conversations)
        new = out[:, enc["input_ids"].shape[1]:]
        return list(tok.batch_decode(new, skip_special_tokens=True))

    def complete(self, conversations: Sequence[Messages]) -> list[Reply]:
        replies: list[Reply] = []
        for i in range(0, len(conversations), self.batch_size):
            chunk = conversations[i:i + self.batch_size]
            try:
                replies.extend(self._generate(chunk))
            except Exception as e:  # OOM, template errors: the whole chunk fails, counted by the core
                log.warning("judge hf backend: generate failed: %s: %s", type(e).__name__, e)
                replies.extend([JudgeCallError("backend_error", f"{type(e).__name__}: {e}"[:200])] * len(chunk))
        return replies

    def close(self) -> None:
        self.model = None


# ------------------------------------------------------------------------------------------------------- vLLM

class VLLMBackend(JudgeBackend):
    """A judge model served by vLLM inside the judge actor (GPU). vLLM is imported here, lazily.

    ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``, ``tensor_parallel_size``).
    vLLM has no per-request timeout in offline mode; ``timeout_s`` is not enforced here.
    """

    name = "vllm"
    deterministic = True

    def __init__(self, cfg: JudgeConfig, engine_kwargs: Optional[dict[str, Any]] = None) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise JudgeBackendUnavailable("judge backend 'vllm' needs the vllm package, which is not installed "
                                          "here (install the GPU extra: pip install 'medgrpo[gpu]'); on CPU use "
                                          "judge.backend=hf or an OpenAI-compatible endpoint") from e
        if not cfg.model:
            raise JudgeBackendUnavailable("judge.model must name a checkpoint (backend 'vllm')")
        self.model_path = cfg.model
        kwargs = {"gpu_memory_utilization": cfg.gpu_memory_utilization, **(engine_kwargs or {})}
        self.llm = LLM(model=cfg.model, **kwargs)
        self.params = SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens)

    def __repr__(self) -> str:
        return f"VLLMBackend(model={self.model_path!r})"

    def complete(self, conversations: Sequence[Messages]) -> list[Reply]:
        try:
            outs = self.llm.chat([list(c) for c in conversations], self.params, use_tqdm=False)
            return [o.outputs[0].text if o.outputs else "" for o in outs]
        except Exception as e:
            log.warning("judge vllm backend: chat failed: %s: %s", type(e).__name__, e)
            return [JudgeCallError("backend_error", f"{type(e).__name__}: {e}"[:200])] * len(conversations)

    def close(self) -> None:
        self.llm = None


BACKENDS = {"openai": OpenAIBackend, "hf": HFBackend, "vllm": VLLMBackend}


def make_backend(cfg: JudgeConfig) -> JudgeBackend:
    """The backend ``cfg.backend`` names. Raises ``JudgeBackendUnavailable`` with the reason it cannot be built."""
    if cfg.backend == "none" or cfg.backend not in BACKENDS:
        raise JudgeBackendUnavailable(f"judge.backend={cfg.backend!r} has no judge; allowed: "
                                      f"{', '.join(BACKENDS)}")
    return BACKENDS[cfg.backend](cfg)

