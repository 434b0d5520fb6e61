"""Loading recipes: YAML (or a dict) + ``key=value`` overrides → a typed :class:`~bertdistill.config.RunConfig`.

The ``method`` section is dispatched by its ``name`` to the registered method's config class; this module is
where the registry meets the config (``config.py`` itself knows no method).
"""

from __future__ import annotations

import os
from typing import Any

from .config import (
    ConfigError,
    MethodConfig,
    RunConfig,
    apply_overrides,
    config_from_dict,
    deep_copy_dicts,
    read_recipe_file,
)


def method_config_class(name: str) -> type[MethodConfig]:
    from .registry import get_method

    try:
        return get_method(name).config_cls
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from e


def load_config(
    source: str | os.PathLike[str] | dict[str, Any] | RunConfig, overrides: list[str] | None = None
) -> RunConfig:
    """Load a recipe (YAML path, dict or RunConfig), apply ``section.key=value`` overrides, and return a typed
    RunConfig."""
    if isinstance(source, RunConfig):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = dict(source)
    else:
        raw = read_recipe_file(source)
    raw = deep_copy_dicts(raw)
    return config_from_dict(apply_overrides(raw, overrides), method_config_class)


__all__ = ["load_config", "method_config_class"]
