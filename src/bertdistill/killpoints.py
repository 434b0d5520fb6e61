"""Test-only kill points: make a run die by ``SIGKILL`` at a named moment, so that tests can check that
``--resume`` recovers from a real ``kill -9`` there (``tests/test_reliability.py``; ``docs/reliability.md``).

Set ``BERTDISTILL_TEST_KILL_AT=<event>:<n>`` in a run's environment and the process kills itself the
``n``-th time (counted in this process, from 1) it passes the point named ``event``. Unset (every normal
run), :func:`kill_point` is one dictionary lookup and does nothing. Never set it outside tests: the run dies
without cleaning up, exactly as under ``kill -9``.
"""

from __future__ import annotations

import os
import signal

ENV = "BERTDISTILL_TEST_KILL_AT"

EVENTS = {
    "cache_batch": "teacher cache build: after a teacher batch, before its shard is written",
    "cache_shard": "teacher cache build: after a shard is written, before the cache is marked complete",
    "step": "after an optimizer step, before its logging, evaluation and checkpoint",
    "eval": "after an evaluation (and the best model it saved), before the step's checkpoint",
    "checkpoint_write": "checkpoint: weights and optimizer written, RNG and trainer state not, not renamed",
    "checkpoint_saved": "checkpoint: renamed into place, older checkpoints not yet pruned",
    "dir_swap": "replacing a model dir (best/, stages/<name>/): old one moved aside, new one not yet in place",
    "stage_end": "stage boundary: the stage's output saved, the next stage not started",
}
"""The named points (``event``) and where each one is."""

_passed: dict[str, int] = {}


def kill_point(event: str) -> None:
    """``SIGKILL`` this process if ``$BERTDISTILL_TEST_KILL_AT`` names ``event`` and this is its n-th pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name not in EVENTS:
        raise ValueError(f"{ENV}={spec!r}: unknown event {name!r}; events are {sorted(EVENTS)}")
    if name != event:
        return
    _passed[event] = _passed.get(event, 0) + 1
    if _passed[event] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
