"""Atomic, resumable checkpoints.

Layout of ``<output_dir>/checkpoints/step-0000123/``: ``bundle.safetensors`` (every trainable module: the
student plus projections / heads), ``optimizer.pt`` and ``scheduler.pt`` (tensors and numbers only,
loaded with ``weights_only=True``), ``rng.pt`` and ``trainer_state.json`` (written last: a directory
without it is incomplete and ignored; it records each other file's size and SHA-256). Each is written into a
temporary directory, fsync'd and renamed into place, so a killed run never leaves a half-written checkpoint;
a checkpoint damaged afterwards (truncated, bytes changed) fails :func:`verify_checkpoint` and
:func:`latest_good_checkpoint` moves it aside and falls back to the one before. A failed write (a full disk)
removes its temporary directory and leaves the earlier checkpoints as they were. ``docs/reliability.md``
lists what was tested.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ..config import ConfigError
from ..hub import TOKENIZER_FILES
from ..killpoints import kill_point

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^\.(.+)\.(?:old|tmp)-[^.]+$")
"""What a killed :func:`atomic_dir` of ``<name>`` leaves: ``.<name>.old-<pid>`` or ``.<name>.tmp-<random>``."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the message names the earlier one that is still intact."""


class RunDirBusyError(CheckpointError):
    """Another process holds the run dir's lock (:func:`run_dir_lock`): it is training into that dir."""


_HELD_RUN_LOCKS: dict[Path, Any] = {}
"""Lock files this process holds (path → open file), so that :func:`run_dir_lock` is re-entrant."""


def _unguarded(path: Path, error: OSError, out: Path) -> None:
    """Where the run-dir lock cannot be taken at all: say so, and let the run go on without it."""
    log.warning("no run-dir lock at %s (%s); make sure no other process trains into %s", path, error, out)


def _lock_file(path: Path, out: Path) -> Any:
    """Open and lock ``path`` (exclusive, not waiting); the open file, or ``None`` where it cannot lock at all
    (a read-only parent of a writable run dir, a file system without ``flock``): the run then goes on unguarded."""
    import fcntl

    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "a+")  # noqa: SIM115 - held open while the lock is held
        except OSError as e:
            return _unguarded(path, e, out)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return _unguarded(path, e, out)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise RunDirBusyError(
                f"{out} is in use: another bertdistill process{who} is training into it (lock {path}). Wait for "
                "it to finish, stop it, or choose another output dir."
            ) from None
        try:
            current = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fh
        fh.close()  # the holder before removed this file as it let go: lock the one at the path now


@contextlib.contextmanager
def run_dir_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside the run dir ``out`` while this process trains into it.

    A second process asked to train, resume or clear the same dir stops at once with :class:`RunDirBusyError`
    (naming the holder's pid) instead of writing over the first one's checkpoints. The lock file sits beside the
    dir, hidden, so clearing, exporting or uploading the dir, or a glob of its parent, leaves it alone; it is
    removed when the lock is let go (a killed run leaves it, unlocked: the OS drops a dead process's lock, and the
    next run takes it). Re-entrant within a process (``run_or_reuse`` holds it around the trainer, which takes it
    again). No lock where ``fcntl`` is missing (Windows), where the file cannot be written or where the file
    system has no ``flock``: the run goes on unguarded and logs a warning."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    out = Path(out).resolve()
    path = out.with_name(f".{out.name}.lock")
    if path in _HELD_RUN_LOCKS:
        yield
        return
    fh = _lock_file(path, out)
    if fh is None:
        yield
        return
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _HELD_RUN_LOCKS[path] = fh
    try:
        yield
    finally:
        del _HELD_RUN_LOCKS[path]
        # removed while still locked: a process that opened it before finds it gone and opens it again
        path.unlink(missing_ok=True)
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def atomic_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` then move ``tmp_dir`` to ``target`` (replacing it) in one rename.

    The files are fsync'd before the rename and the parent dir after it, so that the rename never lands
    before the data. Replacing an existing ``target`` takes two renames (old aside, new in): a run killed
    between them leaves ``.<name>.old-<pid>``, which :func:`recover_dir` puts back."""
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        _fsync_tree(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            kill_point("dir_swap")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def guarded_write(target: Path, write: Callable[[Path], None], *, what: str, then: Callable[[], str]) -> Path:
    """:func:`atomic_dir`, with a failed write (a full disk, however the writer reports it) raised as a
    :class:`CheckpointError` that names ``what`` was being written and ``then()``: what is still intact and what
    to do (looked up only on failure)."""
    try:
        return atomic_dir(target, write)
    except Exception as e:
        why = write_failure(e, target.parent)
        if why is None:
            raise
        raise CheckpointError(f"could not write {what} {target} ({why}); {then()}") from e


def recover_dir(target: Path) -> None:
    """Undo what a killed :func:`atomic_dir` of ``target`` left: put a moved-aside ``target`` back when the
    new one never arrived, and remove leftover temporary and old copies."""
    if not target.parent.is_dir():
        return
    for d in sorted(target.parent.glob(f".{target.name}.old-*")):
        if not target.exists():
            os.replace(d, target)
            log.warning("%s: restored the copy an interrupted replacement had moved aside", target)
        else:
            shutil.rmtree(d, ignore_errors=True)
    for d in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(d, ignore_errors=True)


RUN_DIRS = ("checkpoints", "best", "stages", "control", "tracking")
RUN_FILES = (
    "metrics.json",
    "export.json",
    "log.jsonl",
    "config.json",
    "generation_config.json",
    "multitask.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    *TOKENIZER_FILES,
)
"""What a run (or the model it saves) writes into its output dir, besides weights (``*.safetensors``, ``*.bin``) and
ONNX graphs."""


def clear_previous_run(out: Path) -> list[str]:
    """Before a new run (not a resume) trains into ``out``, remove what an earlier run left there: its checkpoints
    (the new run's would sort below them and be pruned first, and a later ``--resume`` would load the old one),
    ``best/``, stage and control dirs, scores, weights and model files, so that nothing of it is read as the new
    run's. Other files are left. Returns the names removed."""
    if not out.is_dir():
        return []
    removed = []
    for f in sorted(out.iterdir()):
        if f.is_dir() and f.name in RUN_DIRS:
            shutil.rmtree(f)
        elif f.is_file() and (f.name in RUN_FILES or f.suffix in (".safetensors", ".bin", ".onnx")):
            f.unlink()
        else:
            continue
        removed.append(f.name)
    return removed


def recover_run_dir(out: Path) -> None:
    """Tidy an output dir after a kill, before a resume: the model dirs (``best/``, ``stages/*``) as
    :func:`recover_dir` does, and half-written checkpoints' temporary dirs."""
    for parent in (out, out / "stages", out / "checkpoints"):
        if not parent.is_dir():
            continue
        leftovers = (_LEFTOVER.match(d.name) for d in parent.iterdir())
        for name in sorted({m.group(1) for m in leftovers if m}):
            recover_dir(parent / name)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the data files were synced
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            _fsync(f)
    _fsync(root)


def file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file: what :func:`verify_checkpoint` checks it against."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


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
    target = root / f"step-{step:07d}"

    def write(tmp: Path) -> None:
        save_model(bundle, str(tmp / "bundle.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        kill_point("checkpoint_write")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        files = {f.name: file_digest(f) for f in sorted(tmp.iterdir())}
        (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "files": files}, indent=1))

    def intact() -> str:
        prev = latest_checkpoint(root)
        if prev is None:
            return "no earlier checkpoint exists"
        return f"the previous checkpoint {prev} is intact: make room and run again with --resume"

    path = guarded_write(target, write, what="checkpoint", then=intact)
    kill_point("checkpoint_saved")
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return path


_FULL_DISK_TEXT = ("no space left", "storagefull", "unexpected pos", "file write failed")
"""How a full disk reads when it does not come as ``OSError(ENOSPC)``: torch's zip writer raises a
``RuntimeError`` ("PytorchStreamWriter failed writing file ...: file write failed", "... unexpected pos N vs
M") and safetensors its own error naming the I/O error."""


def write_failure(e: BaseException, where: Path) -> str | None:
    """Why writing under ``where`` failed, for a user to act on, or None when ``e`` is not a failed write (a bug
    that should surface as itself)."""
    if isinstance(e, OSError):
        return "the disk is full" if e.errno == errno.ENOSPC else str(e)
    text = str(e).lower()
    if not any(k in text for k in _FULL_DISK_TEXT):
        return None
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"the disk is probably full: {free / 2**20:.0f} MiB free on {probe}; the writer said: {first}"


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


def verify_checkpoint(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be used (unreadable state, a file missing, truncated or
    changed since it was written), or None when it is whole. Checkpoints written before the state file
    recorded digests are checked for their files only."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} is unreadable ({e})"
    files = state.get("files")
    if not isinstance(files, dict):
        files = {name: None for name in ("bundle.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt")}
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if want is None:
            continue
        size = f.stat().st_size
        if size != want["bytes"]:
            return f"{name} has {size} bytes, {want['bytes']} were written (truncated?)"
        if file_digest(f)["sha256"] != want["sha256"]:
            return f"{name} does not match the SHA-256 recorded when it was written (corrupted)"
    return None


def latest_good_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint under ``root`` that :func:`verify_checkpoint` accepts. Each damaged newer one
    is named in a warning and renamed ``<name>.damaged`` (kept for inspection, out of the way of
    :func:`list_checkpoints` and of the resumed run's own saves)."""
    for path in reversed(list_checkpoints(root)):
        why = verify_checkpoint(path)
        if why is None:
            return path
        aside = path.with_name(f"{path.name}.damaged")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
        log.warning("checkpoint %s is damaged: %s; moved to %s, trying the one before", path, why, aside.name)
    return None


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
