"""Loading recipes: YAML (or a dict) + ``key=value`` overrides → a typed :class:`~bertdistill.config.RunConfig`.

The ``method`` section is dispatched by its ``name`` to the registered method's config class; this module is
where the registry meets the config (``config.py`` itself knows no method).

The papers' recipes ship inside the package (``bertdistill/recipe_files/<method>/<task>.yaml``, package data
of the wheel), so that ``bertdistill distill kd/sst2`` runs the same file from a clone or a ``pip install``:
a source that is no file on disk is looked up by that name. They name no local paths (see
:mod:`bertdistill.data.local` for ``$BERTDISTILL_DATA_DIR``).
"""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path
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
from .data.local import expand_data_dir

RECIPE_DIR = "recipe_files"
"""The package data dir of the shipped recipes (``[tool.setuptools.package-data]`` in pyproject.toml)."""


def method_config_class(name: str) -> type[MethodConfig]:
    from .registry import get_method

    try:
        return get_method(name).config_cls
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from e


def shipped_recipes() -> dict[str, Path]:
    """Every shipped recipe by name (``<method>/<task>``), sorted."""
    root = Path(str(resources.files("bertdistill") / RECIPE_DIR))
    return {f"{p.parent.name}/{p.stem}": p for p in sorted(root.glob("*/*.yaml"))}


def recipe_description(path: str | os.PathLike[str]) -> str:
    """A recipe's one-line description: its first comment line (every shipped recipe opens with one)."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def find_recipe(source: str | os.PathLike[str]) -> Path:
    """The recipe file ``source`` names: a file on disk, else a shipped recipe (``kd/sst2``, ``.yaml``
    optional). Neither is a ConfigError listing the close names."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    shipped = shipped_recipes()
    name = str(source).removesuffix(".yaml").removesuffix(".yml")
    if name in shipped:
        return shipped[name]
    # an old checkout path (recipes/kd/sst2.yaml) or a typo: suggest by the last two parts and by the whole
    tail = "/".join(Path(name).parts[-2:])
    close = list(
        dict.fromkeys(
            [
                *difflib.get_close_matches(tail, shipped, n=4, cutoff=0.6),
                *difflib.get_close_matches(name, shipped, n=4, cutoff=0.6),
            ]
        )
    )
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise ConfigError(
        f"recipe {str(source)!r} not found: no such file, and no shipped recipe of that name{hint} "
        "(`bertdistill recipes` lists them all)"
    )


def read_recipe(source: str | os.PathLike[str]) -> dict[str, Any]:
    """A recipe file or shipped recipe name (:func:`find_recipe`) as a raw dict."""
    return read_recipe_file(find_recipe(source))


def quick_recipe(method: str, task: str) -> dict[str, Any]:
    """The recipe for ``bertdistill distill --method M --task T`` without a recipe file: the shipped
    ``<method>/<task>`` where there is one (the paper's settings), else the method's defaults on ``task``."""
    method_config_class(method)  # an unknown method fails here, listing the known ones
    name = f"{method}/{task.lower().replace('-', '').replace('_', '')}"  # SST-2 → sst2, as get_task reads it
    if name in shipped_recipes():
        return read_recipe(name)
    return {"method": {"name": method}, "data": {"task": task}}


def load_config(
    source: str | os.PathLike[str] | dict[str, Any] | RunConfig, overrides: list[str] | None = None
) -> RunConfig:
    """Load a recipe (YAML path, shipped recipe name, dict or RunConfig), apply ``section.key=value``
    overrides, expand ``${BERTDISTILL_DATA_DIR}`` and return a typed RunConfig."""
    if isinstance(source, RunConfig):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = dict(source)
    else:
        raw = read_recipe(source)
    raw = deep_copy_dicts(raw)
    return config_from_dict(expand_data_dir(apply_overrides(raw, overrides)), method_config_class)


__all__ = [
    "find_recipe",
    "load_config",
    "method_config_class",
    "quick_recipe",
    "read_recipe",
    "recipe_description",
    "shipped_recipes",
]
