"""``distill --control``: train the same student without distillation next to the distilled one and say
whether distillation paid.

The control is the method's :meth:`~bertdistill.protocol.Method.control_recipe` of the distilled run's
resolved config: the same student (init and shape), data, seed and number of optimizer steps, written to
``<output_dir>/control``. Both scores go into the distilled run's ``metrics.json`` (``control``) and the
closing summary.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig
from ..registry import get_method

log = logging.getLogger(__name__)

CONTROL_DIR = "control"
DOC = "docs/control.md"


def control_config(run: RunConfig, steps: int) -> RunConfig:
    """The control run of ``run`` (which took ``steps`` optimizer steps, all stages)."""
    from ..recipes import load_config

    method = get_method(run.method.name)
    raw = method.control_recipe(copy.deepcopy(run.to_dict()), steps)
    if raw is None:
        raise ConfigError(f"--control: {method.control_unavailable()}")
    raw["train"]["control"] = False
    raw["output_dir"] = str(run.resolved_output_dir() / CONTROL_DIR)
    return load_config(raw)


def verdict(metric: str, distilled: float, control: float) -> str:
    """One plain sentence: what distillation gained, or that it did not help, with a pointer to what to try."""
    gain = 100 * (distilled - control)
    head = f"{metric}: distilled {distilled:.4f}, control (same student, no distillation) {control:.4f}"
    if gain > 0:
        return f"{head}: distillation gained {gain:+.1f} points (one seed; dev noise is often ~1 point)."
    return f"{head}: distillation did not help here ({gain:+.1f} points); see {DOC} for what to try."


def total_steps(history: list[dict[str, Any]], metrics: dict[str, Any]) -> int:
    """Optimizer steps of a finished run from its log (the last logged step), else its metrics' step."""
    steps = [int(r["step"]) for r in history if "loss" in r and "step" in r]
    return max(steps) if steps else int(metrics.get("step", 0))


def attach(out_dir: Path, metric: str, distilled: dict[str, Any], control: dict[str, Any]) -> dict[str, Any]:
    """Write the control's scores into the distilled run's ``metrics.json``; return the updated metrics."""
    if metric not in distilled or metric not in control:
        raise ConfigError(f"--control: both runs need an evaluation with {metric!r} (is there a dev split?)")
    text = verdict(metric, float(distilled[metric]), float(control[metric]))
    merged = {
        **distilled,
        "control": {
            "dir": str(out_dir / CONTROL_DIR),
            "metrics": {k: v for k, v in control.items() if k not in ("task", "method")},
            "method": control.get("method"),
            "gain": float(distilled[metric]) - float(control[metric]),
            "verdict": text,
        },
    }
    (out_dir / "metrics.json").write_text(json.dumps(merged, indent=1))
    return merged
