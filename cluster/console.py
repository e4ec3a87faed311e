"""The console a newcomer reads: the known noise of a local CPU run quieted, so the run's own lines stand out.

Quieted in every process of a local Ray (``RAY_ENV`` in the actors' environment, ``quiet_worker`` as their setup
hook) and in the driver (``quiet_driver``):
- transformers' "Loading weights" / "Writing model shards" bars, one per actor and per load;
- torch's "No CUDA runtime is found, using CUDA_HOME=..." when DeepSpeed loads on a CPU run (``DS_ACCELERATOR=cpu``)
  on a machine that has a CUDA toolkit: expected there, and said once by ``start_notes``;
- Ray's own RayDeprecationWarning from ``ray.runtime_context`` (Ray calling its deprecated ``actor_id``);
- Ray's token-authentication notice at start-up: the token stays on, ``start_notes`` says it once.
Left as they are: DeepSpeed's "... built successfully" (a plain print) and every real warning or error.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

RAY_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}
SETUP_HOOK = "cluster.console.quiet_worker"
_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def quiet_worker() -> None:
    """Setup hook of every Ray worker process of a local run (also applied to the driver by ``quiet_driver``)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.runtime_context")
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def quiet_driver() -> None:
    """The driver's share: the same filters, HF progress bars off, Ray's token notice replaced by ``start_notes``."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)  # read when transformers is imported (the driver itself never needs it)
    hf = sys.modules.get("transformers")
    if hf is not None:  # imported already: its env check has run
        hf.utils.logging.disable_progress_bar()
    quiet_worker()
    logging.getLogger(_TOKEN_LOGGER).setLevel(logging.ERROR)


def start_notes() -> list[str]:
    """The lines said once when the driver starts a local Ray, in place of the noise quieted above."""
    notes = []
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled":
        notes.append("[medgrpo] Ray token authentication is on (token in ~/.ray/auth_token; RAY_AUTH_MODE=disabled "
                     "turns it off)")
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        notes.append("[medgrpo] CPU run: no CUDA used; the learner's DeepSpeed builds its CPU ops once ('... built "
                     "successfully'); actor lines carry the actor's name and pid")
    return notes
