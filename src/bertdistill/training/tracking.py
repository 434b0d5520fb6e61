"""Experiment tracking through accelerate's trackers (``train.log_with``): which trackers exist, whether their
package is installed, the config flattened to the scalars trackers accept, and the names values are logged
under (docs/tracking.md). ``log.jsonl`` is written either way; a tracker is a second sink for the same values."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..config import ConfigError

PIP_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}
"""Tracker name (accelerate's ``LoggerType``) -> the pip package it needs."""


def check_installed(names: list[str]) -> None:
    """Stop before any training when a tracker's package is missing (accelerate would silently drop it)."""
    from accelerate.utils import imports

    for name in names:
        available = getattr(imports, f"is_{name}_available", None)
        if available is not None and not available():
            package = PIP_PACKAGES.get(name, name)
            raise ConfigError(f"train.log_with: {name} needs `pip install {package}`")


def flat_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; lists and mappings inside lists become JSON
    strings (trackers take str, int, float, bool or None)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            if v:
                out.update(flat_config(v, f"{key}."))
            else:
                out[key] = "{}"
        elif v is None or isinstance(v, bool | int | float | str):
            out[key] = v
        else:
            out[key] = json.dumps(v, default=str)
    return out


def scalars(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``values`` under ``prefix/`` (strings, flags and nested values are left out)."""
    return {
        f"{prefix}/{k}": float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
