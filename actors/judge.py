"""The LLM judge as a Ray actor: ``JudgeActor`` is a thin shell over ``rewards.judge.JudgeCore`` (batching, cache,
retries, circuit breaker), one backend per actor, shared by every reward worker."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import ray

from rewards.config import JudgeConfig
from rewards.judge import JudgeCore, JudgeOutcome, as_judge_config


@ray.remote(num_cpus=0)
class JudgeActor:
    """Ray actor shell over ``JudgeCore``: one judge backend per actor, shared by every reward worker.

    Create it with ``create_judge_actor`` (threaded, ``num_cpus=0`` by default). The API key of the ``openai``
    backend is read from the actor process's environment (``cfg.api_key_env``); on a cluster provide it there
    (a Kubernetes secret in the pod spec, or the job's runtime_env), never in the config.
    """

    def __init__(self, cfg: Union[JudgeConfig, Mapping[str, Any]]) -> None:
        self._core = JudgeCore(as_judge_config(cfg))

    def __repr__(self) -> str:
        return f"JudgeActor({self._core!r})"

    def score(self, pairs: Sequence[tuple[str, str]],
              hints: Union[None, str, Sequence[Optional[str]]] = None) -> list[JudgeOutcome]:
        return self._core.score(pairs, hints)

    def align(self, items: Sequence[tuple[str, str, Optional[str]]]) -> list[JudgeOutcome]:
        return self._core.align(items)

    def metrics(self) -> dict[str, float]:
        return self._core.metrics()

    def ping(self) -> str:
        return self._core.backend.name


def create_judge_actor(cfg: Union[JudgeConfig, Mapping[str, Any]], *, name: Optional[str] = None,
                       **options: Any) -> "ray.actor.ActorHandle":
    """Start a ``JudgeActor``: ``num_cpus=0``, ``num_gpus=cfg.num_gpus``, ``max_concurrency=cfg.max_concurrency``
    (several reward workers call it at once), one restart; ``options`` override any of these."""
    jc = as_judge_config(cfg)
    opts: dict[str, Any] = {"num_cpus": 0, "num_gpus": jc.num_gpus, "max_concurrency": jc.max_concurrency,
                            "max_restarts": 1}
    if name:
        opts["name"] = name
    opts.update(options)
    return JudgeActor.options(**opts).remote(jc)
