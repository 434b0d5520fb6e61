"""Local data when a recipe names none: ``$BERTDISTILL_DATA_DIR``.

The shipped recipes name no local paths, so that they run wherever the package is installed: GLUE comes from
the HF hub (``nyu-mll/glue``) unless ``BERTDISTILL_DATA_DIR`` points at a dir of GLUE-style task folders
(``SST-2/``, ``MRPC/``, ``STS-B/`` ... as the GLUE download unpacks), which then serves every task whose
``data.path`` is unset. Files without a hub source (GloVe vectors, raw-text corpora, parallel text) are
written ``${BERTDISTILL_DATA_DIR}/...`` in a recipe and expanded when the recipe is loaded; an unset variable
is then an error that says what to set, not a path that silently does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import ConfigError

DATA_DIR_ENV = "BERTDISTILL_DATA_DIR"
PLACEHOLDER = "${" + DATA_DIR_ENV + "}"

GLUE_DIRS = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "qqp": "QQP",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
    "wnli": "WNLI",
}
"""Task name → its folder in the GLUE download (what ``$BERTDISTILL_DATA_DIR`` is expected to hold)."""


def data_dir() -> Path | None:
    """``$BERTDISTILL_DATA_DIR`` (``~`` expanded), or None when unset or empty."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def how_to_point(task: str) -> str:
    """The two ways to read ``task`` from local files, for error messages."""
    folder = GLUE_DIRS.get(task, task)
    return f"export {DATA_DIR_ENV}=DIR (a dir holding {folder}/) or --set data.path=DIR/{folder}"


def local_task_dir(task: str) -> Path | None:
    """The folder of GLUE task ``task`` under ``$BERTDISTILL_DATA_DIR``; None when the variable is unset or the
    task is not a GLUE task (then the caller reads the hub, or asks for ``data.path``). A set variable without
    the task's folder is an error: the user asked for local data, so falling back to the network would hide it."""
    root = data_dir()
    folder = GLUE_DIRS.get(task)
    if root is None or folder is None:
        return None
    d = root / folder
    if not d.is_dir():
        raise ConfigError(
            f"{DATA_DIR_ENV}={root} has no {folder}/ folder for task {task}: add it, --set data.path=DIR, or "
            f"unset {DATA_DIR_ENV} to read the HF hub"
        )
    return d


def expand_data_dir(raw: Any, where: str = "") -> Any:
    """``raw`` (a recipe dict, list or value) with every ``${BERTDISTILL_DATA_DIR}`` in a string replaced by the
    variable's value; a reference while it is unset is a ConfigError naming the key."""
    if isinstance(raw, dict):
        return {k: expand_data_dir(v, f"{where}.{k}" if where else str(k)) for k, v in raw.items()}
    if isinstance(raw, list):
        return [expand_data_dir(v, f"{where}[{i}]") for i, v in enumerate(raw)]
    if not isinstance(raw, str) or PLACEHOLDER not in raw:
        return raw
    root = data_dir()
    if root is None:
        key, _, index = where.partition("[")
        value = "[PATH]" if index else "PATH"
        raise ConfigError(
            f"{where} is {raw!r} but {DATA_DIR_ENV} is not set: export {DATA_DIR_ENV}=DIR (the dir holding "
            f"{raw.split(PLACEHOLDER, 1)[1].lstrip('/') or 'these files'}) or --set '{key}={value}'"
        )
    return raw.replace(PLACEHOLDER, str(root))


__all__ = [
    "DATA_DIR_ENV",
    "GLUE_DIRS",
    "PLACEHOLDER",
    "data_dir",
    "expand_data_dir",
    "how_to_point",
    "local_task_dir",
]
