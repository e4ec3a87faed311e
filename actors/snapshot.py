"""Per-call state snapshots of the stateful light actors (normalizer, curriculum), so that an actor Ray restarts
after a crash comes back where it was instead of silently starting over.

The actor writes its state after every state-changing call, atomically (temporary file, then rename), together
with the id of that call and its result. Ray re-runs ``__init__`` with the same arguments on restart: the actor
loads the snapshot there, and a retried call whose id matches the snapshot's returns the recorded result instead
of applying its update twice. Snapshots are JSON (no pickle) and live under the run directory, which every node of
a cluster shares (as checkpoints do).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from common.files import read_json, write_json

log = logging.getLogger(__name__)


class ActorSnapshot:
    """``path``: the snapshot file (None: snapshots off). ``state``/``call_id``/``result``/``restores`` after
    ``load``; ``restores`` counts how many times an actor of this snapshot came back from it."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = Path(path) if path else None
        self.call_id: Optional[str] = None
        self.result: Any = None
        self.restores = 0

    def load(self, restarted: bool = False) -> Optional[dict[str, Any]]:
        """The last saved state, or None when there is none. ``restarted``: Ray is reconstructing the actor (a
        restart before any state was saved has nothing to restore, but is still counted). Restarts are logged."""
        if self.path is None or not self.path.exists():
            if restarted:
                self.restores += 1
                log.warning("actor restarted before it had saved any state: starting empty, as it first did")
            return None
        try:
            snap = read_json(self.path)
        except (OSError, ValueError) as e:  # a torn write cannot happen (rename); a damaged disk can
            raise RuntimeError(f"actor snapshot {self.path} is unreadable ({e}); refusing to start from scratch "
                               "silently: delete it to reset this actor's state") from None
        self.call_id, self.result = snap.get("call_id"), snap.get("result")
        self.restores = int(snap.get("restores", 0)) + 1
        log.warning("actor restarted: state restored from %s (call %s, restore #%d)", self.path, self.call_id,
                    self.restores)
        return snap["state"]

    def replay(self, call_id: Optional[str]) -> tuple[bool, Any]:
        """(True, result) when ``call_id`` is the call the snapshot recorded (a retry after a restart)."""
        if call_id is not None and call_id == self.call_id:
            return True, self.result
        return False, None

    def save(self, state: dict[str, Any], call_id: Optional[str] = None, result: Any = None) -> None:
        self.call_id, self.result = call_id, result
        if self.path is not None:
            write_json(self.path, {"state": state, "call_id": call_id, "result": result, "restores": self.restores},
                       indent=None)

