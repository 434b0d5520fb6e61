"""Run a config or reuse a finished run of the same config: what a sweep and the benchmarks share.

:func:`run_or_reuse` trains one resolved config with :func:`bertdistill.training.loop.distill` (what
``bertdistill distill`` calls) unless ``out_dir`` already holds a *finished* run (``metrics.json``, the model and
``bertdistill.yaml``) whose **full** resolved config, output paths aside, equals the requested one — and whose
local inputs (teacher / student dirs, data files, stamped by content hash when this module trained it) were not
rewritten since. A finished run of another config is retrained (``on_mismatch="retrain"``, the diff is logged) or
refused (``"error"``) — never reused; an unfinished run of the same config resumes from its last checkpoint. So a
killed sweep or benchmark, run again with the same arguments, skips what finished and resumes the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

CONFIG_FILE = "bertdistill.yaml"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
INPUTS_FILE = "bench_inputs.json"
"""Content stamps of a run's local inputs (the name is historical: the benchmarks wrote it first)."""
OUTPUT_KEYS = ("output_dir",)
"""Top-level config keys that say where a run is written, not what it is: ignored when comparing configs."""
CACHE_KEYS = ("cache_dir", "store_dir")
"""Config keys naming caches (keyed by their own content): never fingerprinted as inputs."""

OnMismatch = Literal["retrain", "error"]


class ConfigMismatchError(RuntimeError):
    """A finished run in the output dir was made with another config."""


def comparable(config: Any) -> dict[str, Any]:
    """A config as the dict that decides reuse: everything but the output paths."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in d.items() if k not in OUTPUT_KEYS}


def config_diff(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """``(key, a's value, b's value)`` for every differing leaf of two configs, output paths aside."""

    def walk(x: Any, y: Any, prefix: str) -> list[tuple[str, Any, Any]]:
        if isinstance(x, dict) and isinstance(y, dict):
            out: list[tuple[str, Any, Any]] = []
            for k in sorted(set(x) | set(y), key=str):
                out += walk(x.get(k, "<absent>"), y.get(k, "<absent>"), f"{prefix}{k}.")
            return out
        return [] if x == y else [(prefix.rstrip("."), x, y)]

    return walk(comparable(a), comparable(b), "")


_CONTENT_MEMO: dict[tuple[str, int, int, int], str] = {}
FINGERPRINT_FORMAT = 2
"""Stamps of format 2 hash file contents; format 1 (size + mtime) changed whenever an identical file was
re-materialised (e.g. the read-only shared data, copied afresh on every machine), retraining every run."""


def _content_hash(f: Path) -> str:
    st = f.stat()
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _CONTENT_MEMO:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _CONTENT_MEMO[key] = h.hexdigest()
    return _CONTENT_MEMO[key]


def fingerprint(path: str | Path) -> str:
    """The content of a file, or of the files directly in a dir (a model dir, a data dir), as a short hash:
    it changes when the input is rewritten with other bytes (e.g. a teacher retrained in place) and not when
    the same bytes are copied afresh (a new checkout, the shared data on a new machine). Hashes are memoised
    per (path, size, mtime, inode) within the process."""
    p = Path(path).expanduser()
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}:{_content_hash(f)}\n".encode())
    return h.hexdigest()[:16]


def input_fingerprints(config: Any) -> dict[str, str]:
    """``{config key: fingerprint}`` of every local file or dir a config names (teacher and student dirs,
    data, augmented files, corpora; caches and output paths aside). Two runs of equal configs whose inputs
    were rewritten in between are not the same run."""
    out: dict[str, str] = {}

    def walk(x: Any, key: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if k not in CACHE_KEYS:
                    walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{key}[{i}]")
        elif isinstance(x, str) and ("/" in x or x.startswith("~")):
            p = Path(x).expanduser()
            if p.exists():
                out[key] = fingerprint(p)

    walk(comparable(config), "")
    return out


def inputs_diff(out_dir: str | Path, config: Any) -> list[tuple[str, Any, Any]]:
    """Inputs of ``config`` that changed since the run in ``out_dir`` was trained by this harness (it writes
    :data:`INPUTS_FILE`); empty when they did not, or when the run was made elsewhere (nothing recorded)."""
    path = Path(out_dir) / INPUTS_FILE
    if not path.is_file():
        return []
    saved, now = json.loads(path.read_text()), input_fingerprints(config)
    if saved.pop("_format", 1) != FINGERPRINT_FORMAT:
        return [("input stamps", "size+mtime (old format, not comparable)", "content hashes")]
    return [
        (f"input {k}", saved.get(k), now.get(k))
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
    ]


def is_finished(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a finished run: ``metrics.json`` (written last by the loop), the model weights
    and ``bertdistill.yaml``, and no training log newer than ``metrics.json`` (which would mean a later run
    started in the same dir and did not finish)."""
    out = Path(out_dir)
    metrics = out / METRICS_FILE
    if not (
        metrics.is_file() and (out / CONFIG_FILE).is_file() and any((out / w).is_file() for w in WEIGHTS)
    ):
        return False
    log = out / LOG_FILE
    return not (log.is_file() and log.stat().st_mtime > metrics.stat().st_mtime + 1.0)


def _read_log(out: Path) -> list[dict[str, Any]]:
    path = out / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def stage_steps(history: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Optimizer steps of each stage, from the loop's log (whose ``step`` counts across stages)."""
    last: dict[str, int] = {}
    for r in history:
        if "loss" in r:
            last[r["stage"]] = max(last.get(r["stage"], 0), int(r["step"]))
    out, before = {}, 0
    for name, end in sorted(last.items(), key=lambda kv: kv[1]):
        out[name] = end - before
        before = end
    return out


def _clear(out: Path) -> None:
    """Remove a run dir before training into it again — only one that looks like a bertdistill run."""
    if not out.exists():
        return
    marks = (CONFIG_FILE, METRICS_FILE, LOG_FILE, "checkpoints")
    if out.is_dir() and not any(out.iterdir()):
        return
    if not (out.is_dir() and any((out / m).exists() for m in marks)):
        raise ConfigMismatchError(f"{out} exists and is not a bertdistill run; not overwriting it")
    shutil.rmtree(out)


def _describe_diff(diff: list[tuple[str, Any, Any]], limit: int = 12) -> str:
    text = "; ".join(f"{k}: {a!r} (on disk) -> {b!r} (requested)" for k, a, b in diff[:limit])
    return text + (f"; ... {len(diff) - limit} more" if len(diff) > limit else "")


@dataclass
class Trained:
    """A finished run: trained now, resumed, or reused as it was."""

    config: Any
    """Its resolved RunConfig (``output_dir`` = :attr:`dir`)."""
    dir: Path
    reused: bool
    seconds: float | None = None
    """Wall time of the training in this process (``None`` when reused)."""


def run_or_reuse(
    config: Any,
    out_dir: str | Path | None = None,
    *,
    on_mismatch: OnMismatch = "retrain",
    resume: bool = True,
    quiet: bool = True,
    log: Callable[[str], None] = print,
) -> Trained:
    """Train ``config`` (a RunConfig, recipe path or dict) into ``out_dir`` (default: its ``output_dir``),
    unless a finished run of the same full config is there.

    - finished, same config (output paths aside) and unchanged inputs (:func:`inputs_diff`) → reused as is;
    - finished, another config → ``on_mismatch="retrain"``: the old run is removed (its diff logged) and the
      config trained; ``"error"``: :class:`ConfigMismatchError` listing the differences;
    - unfinished, same config, with a checkpoint → resumed (``resume``); anything else there → removed, trained.
    """
    from ..recipes import load_config
    from .checkpoint import run_dir_lock

    cfg = load_config(config)
    out = Path(out_dir) if out_dir is not None else cfg.resolved_output_dir()
    cfg.output_dir = str(out)

    def saved_diff() -> list[tuple[str, Any, Any]]:
        try:
            saved = load_config(out / CONFIG_FILE)
        except Exception as e:  # an older or hand-edited file that no longer loads
            return [(CONFIG_FILE, f"unreadable: {e}", "a loadable config")]
        return config_diff(saved, cfg) + inputs_diff(out, cfg)

    # held from the first look at the dir to the end of training: another process training into it now would
    # otherwise be cleared or resumed under it (the trainer takes the same lock again)
    lock = run_dir_lock(out) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    with lock:
        return _run_locked(cfg, out, saved_diff, on_mismatch=on_mismatch, resume=resume, quiet=quiet, log=log)


def _run_locked(
    cfg: Any,
    out: Path,
    saved_diff: Callable[[], list[tuple[str, Any, Any]]],
    *,
    on_mismatch: OnMismatch,
    resume: bool,
    quiet: bool,
    log: Callable[[str], None],
) -> Trained:
    from . import loop
    from .checkpoint import latest_checkpoint

    resuming = False
    if is_finished(out):
        diff = saved_diff()
        if not diff:
            log(f"reusing {out} (finished, same config)")
            return Trained(cfg, out, reused=True)
        msg = f"{out} holds a finished run of another config: {_describe_diff(diff)}"
        if on_mismatch == "error":
            raise ConfigMismatchError(
                f"{msg}. Remove it, choose another output dir, or retrain it on purpose."
            )
        log(f"{msg}; retraining")
        _clear(out)
    elif out.exists():
        has_ckpt = latest_checkpoint(out / "checkpoints") is not None
        resuming = resume and has_ckpt and (out / CONFIG_FILE).is_file() and not saved_diff()
        if resuming:
            log(f"resuming the unfinished run in {out}")
        else:
            _clear(out)
    t0 = time.perf_counter()
    (out / METRICS_FILE).unlink(missing_ok=True)
    inputs = input_fingerprints(cfg)
    loop.distill(cfg, resume=resuming, quiet=quiet)
    (out / INPUTS_FILE).write_text(json.dumps({"_format": FINGERPRINT_FORMAT, **inputs}, indent=1) + "\n")
    return Trained(cfg, out, reused=False, seconds=round(time.perf_counter() - t0, 1))
