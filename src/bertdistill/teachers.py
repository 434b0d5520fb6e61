"""The frozen teacher, ensembles of teachers, and a disk cache of their outputs.

A :class:`Teacher` is ``eval()``, ``requires_grad_(False)`` and only ever run under ``torch.no_grad()``; it
is never part of the trainable bundle and never wrapped for DDP. An :class:`EnsembleTeacher` is several of
them read as one: the mean of their class probabilities (MT-DNN KD). A :class:`CachedTeacher` computes the
outputs a method needs once per (teacher weights, the *teacher's* tokens of the dataset, needs, dtype)
fingerprint, stores them with safetensors in shards (an interrupted build resumes at the first missing shard),
and serves them by example index afterwards — across epochs and across runs. :class:`GroupedSource` routes the batches of a grouped (multi-task) dataset to each group's
teacher source.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .data.loading import BatchSampler, Collator, TokenizedDataset, teacher_inputs, teacher_view
from .features import forward_features
from .killpoints import kill_point
from .protocol import Features, Needs, TokenTopK

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
SHARD_EXAMPLES = 4096
"""Examples per shard of a cache build: what a resumed build may redo."""


class DamagedCacheError(RuntimeError):
    """A complete teacher cache that cannot be read back as written; ``load_or_build`` rebuilds it."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("BERTDISTILL_CACHE", "~/.cache/bertdistill")).expanduser()


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the model's weights (names, shapes, bytes) and config: identifies a teacher exactly."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None:
        d = cfg.to_dict()
        for k in (
            "_name_or_path",
            "transformers_version",
            "_attn_implementation_autoset",
            "torch_dtype",
            "dtype",
        ):
            d.pop(k, None)
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


class Teacher:
    """A frozen model run only for its outputs."""

    def __init__(self, model: nn.Module, name: str = "teacher") -> None:
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.name = name
        self._fingerprint: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        return self

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    @torch.no_grad()
    def features(self, batch: Mapping[str, Any], needs: Needs) -> Features:
        self.model.eval()
        inputs = {k: v.to(self.device) for k, v in teacher_inputs(batch).items()}
        return forward_features(self.model, inputs, needs)[1]


class EnsembleTeacher:
    """Several frozen teachers read as one (MT-DNN KD): ``logits = log(mean_i softmax(z_i))``, so that
    ``softmax(logits)`` is exactly the mean of the members' class probabilities — not the softmax of their
    mean logits; for regression (``regression=True``) the mean of the members' predictions. Only logits:
    averaging hidden states of different models has no meaning."""

    def __init__(self, members: list[Teacher], regression: bool = False) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one teacher")
        self.members = members
        self.regression = regression
        self.name = "ensemble"

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def to(self, device: torch.device | str) -> EnsembleTeacher:
        for m in self.members:
            m.to(device)
        return self

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"ensemble:{int(self.regression)}".encode())
        for m in self.members:
            h.update(m.fingerprint().encode())
        return h.hexdigest()[:20]

    @torch.no_grad()
    def features(self, batch: Mapping[str, Any], needs: Needs) -> Features:
        if needs.hidden_states or needs.attentions:
            raise ValueError("an ensemble of teachers gives logits only (no hidden states or attention maps)")
        logits = [m.features(batch, needs).logits for m in self.members]
        return Features(logits=ensemble_logits([z for z in logits if z is not None], self.regression))


def _autocast(teacher: Any, compute: str) -> Any:
    """An autocast context for the teacher's device at ``compute`` precision (a no-op for fp32)."""
    if compute == "fp32":
        return contextlib.nullcontext()
    model = getattr(teacher, "model", teacher)
    device = next(model.parameters()).device.type if isinstance(model, nn.Module) else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16 if compute == "bf16" else torch.float16)


def ensemble_logits(member_logits: list[Tensor], regression: bool = False) -> Tensor:
    """``log(mean_i softmax(z_i))`` per row (classification) or ``mean_i z_i`` (regression)."""
    z = torch.stack([t.float() for t in member_logits])
    if regression:
        return z.mean(0)
    return torch.logsumexp(torch.log_softmax(z, dim=-1), dim=0) - torch.log(
        torch.tensor(float(len(member_logits)))
    )


class GroupedSource:
    """Teacher outputs for the batches of a grouped dataset: each batch goes to its group's source (a
    teacher, an ensemble, a cache, or ``None`` = that group has no teacher)."""

    def __init__(self, sources: Mapping[str, Any]) -> None:
        self.sources = dict(sources)

    def features(self, batch: Mapping[str, Any], needs: Needs) -> Features | None:
        src = self.sources.get(batch["group"])
        return None if src is None else src.features(batch, needs)


class CachedTeacher:
    """Teacher outputs for one dataset, computed once and served by example index.

    Logits are stored ``[N, C]``; hidden states and attention maps, which vary in length, are stored flat
    with per-example offsets (no padding on disk) and re-padded to each batch's width when served; per-token
    top-k logits (``Needs.token_topk``) are stored as ragged rows ``[R, k]`` (values and int32 ids) with
    per-example row offsets.

    The build is sharded and resumable: examples are processed ``shard_examples`` at a time (in index order),
    each shard written atomically to ``<root>.partial/part-NNNNN.safetensors`` (with its compute time, first row
    and example count in the file's metadata) as soon as it is done, so that an interrupted build — a killed run
    — resumes at the first missing shard. The build keeps every shard's tensors in memory and serves the
    finished cache from them (the whole cache is in memory either way). ``meta.json`` (written last, then the dir renamed to ``<root>``)
    marks a complete cache; it records the total build time over every session (``build_seconds``) and each
    shard's SHA-256. A cache that fails to load or to match them (a truncated or corrupted file) is named
    in a warning, removed and built again; so is an unreadable shard of an interrupted build.
    """

    def __init__(
        self,
        root: Path,
        needs: Needs,
        tensors: dict[str, Tensor],
        lengths: Tensor,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.needs = needs
        self.tensors = tensors
        self.lengths = lengths
        self.meta = dict(meta or {})
        self.built_now = False
        """True when this object's ``load_or_build`` computed (some of) the outputs, False on a cache hit."""
        self.offsets: dict[str, Tensor] = {}
        for key, t in tensors.items():
            if key.startswith("offsets."):
                self.offsets[key[len("offsets.") :]] = t

    @property
    def build_seconds(self) -> float | None:
        """Teacher compute time of the whole build (summed over interrupted and resumed sessions)."""
        v = self.meta.get("build_seconds")
        return None if v is None else float(v)

    # ------------------------------------------------------------------ building
    @classmethod
    def fingerprint(
        cls, teacher: Any, data: TokenizedDataset, needs: Needs, dtype: str, compute: str = "fp32"
    ) -> str:
        fields = {
            "format": CACHE_FORMAT,
            "teacher": teacher.fingerprint(),
            "data": data.fingerprint(),
            "needs": needs.key(),
            "dtype": dtype,
        }
        if compute != "fp32":  # features computed under bf16 autocast are other numbers (fp32 keys unchanged)
            fields["compute"] = compute
        key = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:24]

    @classmethod
    def load_or_build(
        cls,
        teacher: Any,
        data: TokenizedDataset,
        needs: Needs,
        pad_token_id: int,
        cache_dir: Path | None = None,
        dtype: str = "float32",
        batch_size: int = 128,
        progress: Any = None,
        label: str = "teacher cache",
        shard_examples: int | None = None,
        compute: str = "fp32",
    ) -> CachedTeacher:
        """The teacher's features on ``data``: read from the cache, or computed once and stored (in ``dtype``).
        ``compute`` = ``bf16`` runs the teacher under bf16 autocast (what a ``mixed_precision: bf16`` run's live
        teacher does); the precision is part of the cache key, so fp32 and bf16 features never mix."""
        if compute not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"compute must be fp32, bf16 or fp16, got {compute!r}")
        data = teacher_view(data)  # type: ignore[assignment]
        if not isinstance(data, TokenizedDataset):
            raise TypeError(f"the teacher cache needs a TokenizedDataset, got {type(data).__name__}")
        root = (
            (cache_dir or default_cache_dir())
            / "teacher"
            / cls.fingerprint(teacher, data, needs, dtype, compute)
        )
        hit = cls._open_if_complete(root, needs)
        if hit is not None:
            return hit
        root.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(root):
            # another process (a second benchmark job on the same data) may have built it while this one waited
            hit = cls._open_if_complete(root, needs)
            if hit is None:
                hit = cls._build(
                    teacher,
                    data,
                    needs,
                    pad_token_id,
                    root,
                    dtype,
                    batch_size,
                    progress,
                    label,
                    shard_examples,
                    compute,
                )
            # the cache is complete: a process still waiting on the lock finds it when it gets the lock, so the
            # lock file can go (it is left behind only by a build that did not finish)
            root.with_name(root.name + ".lock").unlink(missing_ok=True)
            return hit

    @classmethod
    def _open_if_complete(cls, root: Path, needs: Needs) -> CachedTeacher | None:
        """The finished cache at ``root``, or None (none there, or a damaged one, which is removed)."""
        if (root / "meta.json").is_file():
            try:
                cache = cls.open(root, needs)
                log.info("teacher cache hit: %s", root)
                return cache
            except DamagedCacheError as e:
                log.warning("%s; removing it and building the cache again", e)
                shutil.rmtree(root, ignore_errors=True)
        return None

    @classmethod
    def _build(
        cls,
        teacher: Any,
        data: TokenizedDataset,
        needs: Needs,
        pad_token_id: int,
        root: Path,
        dtype: str,
        batch_size: int,
        progress: Any,
        label: str,
        shard_examples: int | None,
        compute: str,
    ) -> CachedTeacher:
        shard_examples = shard_examples or SHARD_EXAMPLES
        partial = root.with_name(root.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        shards = [range(s, min(s + shard_examples, len(data))) for s in range(0, len(data), shard_examples)]
        done = sum(1 for k in range(len(shards)) if _shard_path(partial, k).is_file())
        log.info(
            "building teacher cache for %d examples at %s (%d/%d shards already done)",
            len(data),
            root,
            done,
            len(shards),
        )
        collator = Collator(pad_token_id)
        batches = [_shard_batches(data, rows, batch_size) for rows in shards]
        task = (
            progress.add_task(label, total=sum(len(b) for b in batches), terms="")
            if progress is not None
            else None
        )
        seconds = 0.0
        # Every shard's tensors stay in memory once computed or read back (the finished cache holds them all
        # anyway), with the SHA-256 of the bytes written: the cache is served from them, not read and hashed
        # again from disk.
        parts: list[dict[str, Tensor]] = []
        digests: list[str] = []
        for k, rows in enumerate(shards):
            path = _shard_path(partial, k)
            resumed = _read_shard(path, rows, data) if path.is_file() else None
            if resumed is not None:
                seconds += resumed[0]
                parts.append(resumed[1])
                digests.append(resumed[2])
                if task is not None:
                    progress.advance(task, len(batches[k]))
                continue
            t0 = time.perf_counter()
            with _autocast(teacher, compute):
                tensors = cls._compute(
                    teacher, data, rows, batches[k], needs, collator, getattr(torch, dtype), progress, task
                )
            spent = time.perf_counter() - t0
            seconds += spent
            shard_meta = {"seconds": repr(spent), "examples": str(len(rows)), "first": str(rows.start)}
            digests.append(_atomic_save(tensors, path, shard_meta))
            parts.append(tensors)
            kill_point("cache_shard")
        if task is not None:
            progress.remove_task(task)
        meta = {
            "format": CACHE_FORMAT,
            "teacher": teacher.fingerprint(),
            "data": data.fingerprint(),
            "needs": needs.key(),
            "dtype": dtype,
            "compute": compute,
            "examples": len(data),
            "shards": len(shards),
            "shard_examples": shard_examples,
            "build_seconds": seconds,
            "sha256": digests,
        }
        (partial / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(partial, root)
        except OSError:  # another process built it first: serve its files
            shutil.rmtree(partial, ignore_errors=True)
            cache = cls.open(root, needs)
        else:
            tensors = _merge_shards(parts)
            del parts
            cache = cls(root, needs, tensors, tensors["lengths"], meta)
        cache.built_now = True
        return cache

    @classmethod
    def open(cls, root: Path, needs: Needs) -> CachedTeacher:
        """A complete cache dir (``meta.json`` present): its shards, checked against the SHA-256 in
        ``meta.json`` (caches written before it recorded them: only that they load), merged in memory.
        Raises :class:`DamagedCacheError` naming the file when a shard is missing, truncated or changed."""
        try:
            meta = json.loads((root / "meta.json").read_text())
            n = int(meta["shards"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DamagedCacheError(f"teacher cache {root} is damaged: meta.json is unreadable ({e})") from e
        digests = meta.get("sha256") or [None] * n
        parts = []
        for k in range(n):
            path = _shard_path(root, k)
            try:
                raw = _read(path)
                if digests[k] is not None and _sha256(raw) != digests[k]:
                    raise ValueError(
                        "its SHA-256 differs from the one recorded when it was written (corrupted)"
                    )
                parts.append(load_bytes(raw))
            except (OSError, ValueError, SafetensorError) as e:
                raise DamagedCacheError(f"teacher cache {root} is damaged: {path.name}: {e}") from e
        tensors = _merge_shards(parts)
        return cls(root, needs, tensors, tensors["lengths"], meta)

    @staticmethod
    @torch.no_grad()
    def _compute(
        teacher: Any,
        data: TokenizedDataset,
        rows: range,
        batches: list[list[int]],
        needs: Needs,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
        dtype: torch.dtype,
        progress: Any,
        task: Any,
    ) -> dict[str, Tensor]:
        """The outputs of examples ``rows`` (one shard), indexed from the shard's first example."""
        n, start = len(rows), rows.start
        lengths = _shard_lengths(data, rows)
        loader = DataLoader(  # its own generator: building a cache must not move the global RNG (dropout)
            data, batch_sampler=batches, collate_fn=collator, generator=torch.Generator().manual_seed(0)
        )
        logits: Tensor | None = None
        chunks: dict[str, list[tuple[int, Tensor]]] = {}
        for batch in loader:
            f = teacher.features(batch, needs)
            local = batch["idx"] - start
            if f.logits is not None:
                if logits is None:
                    logits = torch.zeros((n, *f.logits.shape[1:]), dtype=dtype)
                logits[local] = f.logits.to("cpu", dtype)
            kill_point("cache_batch")
            for i, row in enumerate(local.tolist()):
                k = int(lengths[row])
                for layer, h in f.hidden_states.items():
                    chunks.setdefault(f"hidden.{layer}", []).append(
                        (row, h[i, : min(k, h.shape[1])].to("cpu", dtype).reshape(-1))
                    )
                for layer, a in f.attentions.items():
                    chunks.setdefault(f"attention.{layer}", []).append(
                        (row, a[i, :, :k, :k].to("cpu", dtype).reshape(-1))
                    )
            if f.topk is not None:
                _collect_topk(f.topk, local, dtype, chunks)
            if task is not None:
                progress.advance(task)
        out: dict[str, Tensor] = {"lengths": lengths}
        if logits is not None:
            out["logits"] = logits
        for key, items in chunks.items():
            items.sort(key=lambda x: x[0])
            if key.startswith("topk."):
                out[key] = torch.cat([t for _, t in items])
                if key == "topk.values":
                    sizes = torch.tensor([t.shape[0] for _, t in items], dtype=torch.long)
                    out["offsets.topk"] = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
                continue
            sizes = torch.tensor([t.numel() for _, t in items], dtype=torch.long)
            out[key] = torch.cat([t for _, t in items]) if items else torch.zeros(0, dtype=dtype)
            out[f"offsets.{key}"] = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        return out

    # ------------------------------------------------------------------ serving
    def features(self, batch: Mapping[str, Any], needs: Needs | None = None) -> Features:
        idx = batch["idx"].cpu()
        ids = teacher_inputs(batch)["input_ids"]
        device, width = ids.device, ids.shape[1]
        feats = Features()
        if "logits" in self.tensors:
            feats.logits = self.tensors["logits"][idx].float().to(device)
        for key, flat in self.tensors.items():
            if key.startswith("hidden.") or key.startswith("attention."):
                kind, layer = key.split(".")
                feats_dict = feats.hidden_states if kind == "hidden" else feats.attentions
                feats_dict[int(layer)] = self._gather(kind, flat, self.offsets[key], idx, width).to(device)
        if "topk.values" in self.tensors:
            feats.topk = self._gather_topk(idx, device)
        return feats

    def _gather_topk(self, idx: Tensor, device: torch.device) -> TokenTopK:
        off = self.offsets["topk"]
        starts, counts = off[idx], off[idx + 1] - off[idx]
        rows = ragged_rows(starts, counts)
        return TokenTopK(
            self.tensors["topk.values"][rows].float().to(device),
            self.tensors["topk.indices"][rows].long().to(device),
            counts.to(device),
        )

    def _gather(self, kind: str, flat: Tensor, offsets: Tensor, idx: Tensor, width: int) -> Tensor:
        """The examples ``idx`` of one stored layer, as float32 and zero-padded to ``width``: hidden states
        ``[B, width, H]`` (``[B, 1, H]`` for [CLS]-only caches), attention maps ``[B, heads, width, width]``.
        Each example's values are contiguous in ``flat``; they are copied straight into one preallocated batch
        tensor (a pad and a stack per example cost 2-4x as much: ``docs/speed.md``)."""
        starts, ends = offsets[idx].tolist(), offsets[idx + 1].tolist()
        lengths = self.lengths[idx].tolist()
        first = flat[starts[0] : ends[0]]
        if kind == "hidden":
            if self.needs.cls_only:
                return (
                    torch.stack([flat[s:e] for s, e in zip(starts, ends, strict=True)]).float().unsqueeze(1)
                )
            dim = first.numel() // lengths[0]
            out = torch.zeros((len(starts), width, dim), dtype=torch.float32)
            for i, (s, e, k) in enumerate(zip(starts, ends, lengths, strict=True)):
                out[i, :k] = flat[s:e].view(k, dim)
            return out
        heads = first.numel() // (lengths[0] * lengths[0])
        out = torch.zeros((len(starts), heads, width, width), dtype=torch.float32)
        for i, (s, e, k) in enumerate(zip(starts, ends, lengths, strict=True)):
            out[i, :, :k, :k] = flat[s:e].view(heads, k, k)
        return out


def ragged_rows(starts: Tensor, counts: Tensor) -> Tensor:
    """Row numbers ``starts[0] … starts[0]+counts[0]-1, starts[1] …`` of a ragged selection, as one tensor."""
    total = int(counts.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    first = torch.repeat_interleave(starts, counts)
    within = torch.arange(total) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    return first + within


def _collect_topk(
    topk: TokenTopK, local: Tensor, dtype: torch.dtype, chunks: dict[str, list[tuple[int, Tensor]]]
) -> None:
    counts = topk.counts.cpu()
    if len(counts) != len(local):
        raise RuntimeError(f"token top-k: {len(counts)} row counts for a batch of {len(local)} examples")
    values = topk.values.to("cpu", dtype).split(counts.tolist())
    indices = topk.indices.to("cpu", torch.int32).split(counts.tolist())
    for row, v, i in zip(local.tolist(), values, indices, strict=True):
        chunks.setdefault("topk.values", []).append((row, v))
        chunks.setdefault("topk.indices", []).append((row, i))


def _shard_path(root: Path, k: int) -> Path:
    return root / f"part-{k:05d}.safetensors"


def _shard_lengths(data: TokenizedDataset, rows: range) -> Tensor:
    """The token counts of the examples ``rows`` (one shard), as the shard stores them."""
    return torch.tensor(data.lengths[rows.start : rows.stop], dtype=torch.long)


def _shard_batches(data: TokenizedDataset, rows: range, batch_size: int) -> list[list[int]]:
    """Length-sorted batches of the examples ``rows`` (global indices)."""
    lengths = data.lengths[rows.start : rows.stop]
    return [[rows.start + i for i in b] for b in BatchSampler(lengths, batch_size, shuffle=False)]


def _read_shard(
    path: Path, rows: range, data: TokenizedDataset
) -> tuple[float, dict[str, Tensor], str] | None:
    """A finished shard of an interrupted build: its compute time, tensors and SHA-256; None (and the shard
    removed, to be computed again) when it cannot be read or holds other examples than ``rows`` (a build
    interrupted with another shard size: merged as it is, its rows would be served for other examples)."""
    try:
        raw = _read(path)
        meta = _metadata(raw)
        tensors = load_bytes(raw)
        first, examples = meta.get("first"), meta.get("examples")
        lengths = _shard_lengths(data, rows)
        if (
            (first is not None and int(first) != rows.start)
            or (examples is not None and int(examples) != len(rows))
            or not torch.equal(tensors["lengths"], lengths)
        ):
            raise ValueError(
                f"it holds other examples than rows {rows.start}..{rows.stop - 1} (another shard size?)"
            )
        return float(meta.get("seconds", 0.0)), tensors, _sha256(raw)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        log.warning("teacher cache shard %s is damaged (%s); computing it again", path, e)
        path.unlink(missing_ok=True)
        return None


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (its header: an 8-byte little-endian length, then
    JSON), without opening the file a second time."""
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    return dict(header.get("__metadata__") or {})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<root>.lock`` while the cache at ``root`` is built, so that two processes
    asked for the same cache (two benchmark jobs, two runs on one data set) build it once: the second waits,
    then finds it complete. The OS drops the lock when its process dies (a killed build leaves no stale lock);
    where ``fcntl`` is missing (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(root.with_name(root.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> str:
    """Write ``tensors`` to ``path`` atomically (a temporary file, then a rename); the SHA-256 of its bytes."""
    raw = save_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return _sha256(raw)


def _merge_shards(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """One dict of tensors from per-shard dicts: rows concatenated, flat tensors concatenated with their
    per-example offsets shifted."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, Tensor] = {}
    for key in parts[0]:
        if key.startswith("offsets."):
            pieces, base = [torch.zeros(1, dtype=torch.long)], 0
            for p in parts:
                pieces.append(p[key][1:] + base)
                base += int(p[key][-1])
            out[key] = torch.cat(pieces)
        else:
            out[key] = torch.cat([p[key] for p in parts])
    return out
