"""Atomic, resumable checkpoints.

Layout of ``<output_dir>/checkpoints/step-0000123/``: ``bundle.safetensors`` (every trainable module: the
student plus projections / heads), ``optimizer.pt`` and ``scheduler.pt`` (tensors and numbers only,
loaded with ``weights_only=True``), ``rng.pt`` and ``trainer_state.json`` (written last: a directory
without it is incomplete and ignored). Each is written into a temporary directory that is renamed into
place, so a killed run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ..config import ConfigError

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def atomic_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` then move ``tmp_dir`` to ``target`` (replacing it) in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def publish_files(src: Path, dst: Path) -> None:
    """Copy every file of ``src`` into ``dst``, each through a temporary name and an atomic rename."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file():
            tmp = dst / f".{f.name}.tmp"
            shutil.copy2(f, tmp)
            os.replace(tmp, dst / f.name)


def rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: Path,
    bundle: nn.Module,
    optimizer: Any,
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep_last: int,
) -> Path:
    step = int(trainer_state["global_step"])

    def write(tmp: Path) -> None:
        save_model(bundle, str(tmp / "bundle.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))

    path = atomic_dir(root / f"step-{step:07d}", write)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and (d / STATE_FILE).is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def load_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def load_bundle(path: Path, bundle: nn.Module) -> None:
    """Load a checkpoint's weights into ``bundle``; a checkpoint of another model (other layers, widths or
    modules: a recipe changed between the run and its ``--resume``) is a ConfigError."""
    try:
        missing, unexpected = load_model(bundle, str(path / "bundle.safetensors"), strict=False)
    except RuntimeError as e:  # shapes differ: name the first, on one line
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("size mismatch")]
        detail = lines[0] if lines else str(e).splitlines()[0]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise ConfigError(
            f"checkpoint {path} does not fit the model built from the recipe: {detail}{more}; resume with the "
            "recipe that wrote it, or write this run to another --output"
        ) from None
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {path} does not match the model built from the recipe "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); resume with the recipe that wrote it, "
            "or write this run to another --output"
        )


def load_optim(path: Path, optimizer: Any, scheduler: Any) -> None:
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))
