"""Shared fixtures: one real local Ray per test session, environment defaults for CPU runs."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# DeepSpeed JIT-builds its CPU shm-comm op into TORCH_EXTENSIONS_DIR; the build flags hold the venv's path, so two
# checkouts sharing the default folder rebuild it for each other (minutes under load: learner setups then ran
# past cluster.get_timeout_s). One folder per interpreter prefix builds it once per checkout.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions" / (
    "medgrpo-" + hashlib.sha1(sys.prefix.encode()).hexdigest()[:10])))
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs, no dashboard). Light actors should ask for num_cpus=0 (see DESIGN.md)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def examples():
    """One real MedVidBench question/answer pair per qa_type (shared/data/medvidbench_examples.json)."""
    import json

    path = SHARED / "data" / "medvidbench_examples.json"
    if not path.exists():  # CI clones with shared/ beside the repo; fall back to the copy in tests/
        path = REPO / "tests" / "fixtures" / "medvidbench_examples.json"
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small synthetic MedVidBench (real MP4s + frame lists + image sets) generated once per session."""
    from data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(str(out), n_per_task=6, seed=0)
    return out


@pytest.fixture(scope="session")
def media_prompts(synth_dir):
    """One prompt of each input kind from the synthetic corpus: ``text``, ``image``, ``video`` (an MP4) and
    ``frames`` (a frame list)."""
    import dataclasses

    from data.reader import read_instances

    video = read_instances(synth_dir / "train.jsonl").instances
    images = read_instances(synth_dir / "images_train.jsonl").instances
    img = next(i for i in images if i.qa_type == "vqa_mc")
    return {"text": dataclasses.replace(img, image=None, uid="text-only#vqa_mc"), "image": img,
            "video": next(i for i in video if i.qa_type == "tal" and isinstance(i.video, str)),
            "frames": next(i for i in video if i.qa_type == "stg" and isinstance(i.video, list))}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, synth_dir):
    """The tiny Qwen2.5-VL (tokenizer trained on the synthetic corpus), saved as an HF folder."""
    from data.tiny_model import build_tiny_model, corpus_of

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model",
                            corpus_texts=corpus_of(sorted(synth_dir.glob("*.jsonl"))), seed=0)
