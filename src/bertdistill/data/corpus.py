"""Raw-text corpora for masked-LM training and pre-training distillation (DistilBERT, ``mlm``, TinyBERT's
``general`` stage).

A corpus (text files with one document or sentence per line, or a text column of an HF dataset) is tokenised
*once*, streaming, into an on-disk token store: ``tokens.bin`` (all token ids, a flat ``uint16``/``int32``
array read back with ``numpy.memmap``), ``offsets.npy`` (sequence ``i`` is ``tokens[offsets[i]:offsets[i+1]]``,
special tokens included) and ``counts.npy`` (how often each vocabulary id occurs — for the XLM-style smoothed
choice of the positions to mask). Memory stays bounded by one chunk of lines, whatever the corpus size; the
store is cached under ``<cache_dir>/corpus_store/<fingerprint>/`` and reused while files, tokenizer and options are
unchanged.

Sequences are one line each (the official DistilBERT code: a line longer than ``max_length`` is cut into
several sequences, each with its own ``[CLS]``/``[SEP]``) or, with ``pack``, the token stream of consecutive
lines cut into full ``max_length`` sequences.

The source and cutting options (:class:`CorpusSourceConfig`) are shared by every raw-text reader; the
masked-LM methods extend them with held-out and masking options (:class:`CorpusConfig`). Masking
(:func:`mlm_mask`) happens in the collator, so every time a batch is formed it gets a new mask (dynamic
masking, RoBERTa/DistilBERT).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import ConfigError
from .loading import Collator
from .rows import text_lines

STORE_FORMAT = 1
CHUNK_LINES = 4096


@dataclass
class CorpusSourceConfig:
    """Where a raw-text corpus comes from and how it is cut into sequences: the options every raw-text
    reader shares (``distilbert`` and ``mlm`` through :class:`CorpusConfig`, TinyBERT's ``general`` stage).
    A mixin of options, not a method config: a method's config lists it next to ``MethodConfig``
    (``class MyConfig(CorpusConfig, MethodConfig)``)."""

    corpus: list[str] = field(default_factory=list)
    """Text files, one document or sentence per line (empty lines skipped)."""
    hf_dataset: str | None = None
    """Instead of / besides files: an HF dataset (``datasets.load_dataset`` path or name, streamed)."""
    hf_config: str | None = None
    hf_split: str = "train"
    hf_column: str = "text"
    hf_data_files: list[str] = field(default_factory=list)
    """``data_files`` for a generic builder (``hf_dataset: json`` / ``csv`` / ``parquet`` with local files)."""
    pack: bool = False
    """``false``: one sequence per line, a line longer than ``data.max_length`` cut into several (official
    DistilBERT); ``true``: the lines' tokens concatenated and cut into full ``data.max_length`` sequences."""
    min_tokens: int = 3
    """Sequences shorter than this (special tokens included) are dropped (official DistilBERT: 12 with BERT's
    ``[CLS] … [SEP]``, tuned for Wikipedia; short-sentence corpora need a lower bound)."""
    store_dir: str | None = None
    """Where tokenised corpora are cached (default ``<teacher.cache_dir or ~/.cache/bertdistill>/corpus_store``)."""

    def check_source(self, needed_by: str | None) -> None:
        """Validate the source options; ``needed_by`` (e.g. ``"method 'mlm'"``) names what requires a corpus,
        ``None`` when nothing does (then an empty source is fine)."""
        if needed_by and not self.corpus and not self.hf_dataset:
            raise ConfigError(
                f"{needed_by} needs a raw-text corpus: set method.corpus to a list of text files "
                "(one document or sentence per line) or method.hf_dataset (with method.hf_column)"
            )
        if self.hf_data_files and not self.hf_dataset:
            raise ConfigError(
                "method.hf_data_files needs method.hf_dataset: the builder that reads them (json, csv, parquet, "
                "text); plain text files go to method.corpus"
            )
        if self.min_tokens < 1:
            raise ConfigError(f"method.min_tokens must be >= 1, got {self.min_tokens}")


@dataclass
class CorpusConfig(CorpusSourceConfig):
    """Corpus, held-out and masking options of the masked-LM methods (``distilbert``, ``mlm``)."""

    heldout_file: str | None = None
    """A separate text file for the held-out MLM loss / perplexity; unset = a slice of the corpus."""
    heldout_fraction: float = 0.01
    """Share of the corpus's sequences held out (seeded) when no ``heldout_file`` is given."""
    max_heldout: int = 2000
    """At most this many held-out sequences (evaluation cost)."""
    heldout_seed: int = 0
    """Seed of the held-out slice — independent of ``train.seed``, so that runs with other seeds (the MLM
    teacher, the students) hold out the same sequences and never train on each other's evaluation data."""
    mlm_probability: float = 0.15
    mask_token_prob: float = 0.8
    """Of the chosen positions: replaced by ``[MASK]`` …"""
    keep_token_prob: float = 0.1
    """… kept unchanged …"""
    random_token_prob: float = 0.1
    """… or replaced by a random vocabulary id (the three sum to 1)."""
    mlm_smoothing: float = 0.7
    """XLM-style frequency smoothing: a position holding token w is chosen with probability ∝
    max(count(w), 1)^−mlm_smoothing (0 = uniform over the maskable tokens)."""

    def __post_init__(self) -> None:
        self.check_source(f"method {getattr(self, 'name', '')!r}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"method.mlm_probability must be in (0, 1), got {self.mlm_probability}")
        probs = (self.mask_token_prob, self.keep_token_prob, self.random_token_prob)
        if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise ConfigError(
                "method.mask_token_prob, keep_token_prob and random_token_prob must be >= 0 and sum to 1 "
                f"(BERT: 0.8, 0.1, 0.1), got {probs}"
            )
        if self.mlm_smoothing < 0:
            raise ConfigError(f"method.mlm_smoothing must be >= 0 (0 = uniform), got {self.mlm_smoothing}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ConfigError(f"method.heldout_fraction must be in [0, 1), got {self.heldout_fraction}")


# ----------------------------------------------------------------------------------------------- reading


def iter_lines(cfg: CorpusSourceConfig, files: Sequence[str] | None = None) -> Iterator[str]:
    """Non-empty, stripped lines of the corpus files, then of the HF dataset column (streamed)."""
    for f in cfg.corpus if files is None else files:
        path = Path(f).expanduser()
        if not path.is_file():
            raise ConfigError(f"corpus file {str(path)!r} not found")
        for line in text_lines(
            path
        ):  # a byte that is not UTF-8 stops with its line and column, as task files do
            line = line.strip()
            if line:
                yield line
    if files is None and cfg.hf_dataset:
        import datasets

        kwargs: dict[str, Any] = {"split": cfg.hf_split, "streaming": True}
        if cfg.hf_data_files:
            kwargs["data_files"] = [str(Path(f).expanduser()) for f in cfg.hf_data_files]
        ds = datasets.load_dataset(cfg.hf_dataset, cfg.hf_config, **kwargs)
        for row in ds:
            if cfg.hf_column not in row:
                raise ConfigError(
                    f"hf dataset {cfg.hf_dataset!r} has no column {cfg.hf_column!r}: {list(row)}"
                )
            text = str(row[cfg.hf_column] or "").strip()
            if text:
                yield text


def _chunks(lines: Iterator[str], n: int) -> Iterator[list[str]]:
    buf: list[str] = []
    for line in lines:
        buf.append(line)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def special_template(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single sequence (BERT: ``[CLS]``, ``[SEP]``),
    found by tokenising a probe with and without them."""
    for probe in ("a", "the", "x", "0"):
        inner = tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = tokenizer(probe)["input_ids"]
        for k in range(len(full) - len(inner) + 1):
            if inner and full[k : k + len(inner)] == inner:
                return list(full[:k]), list(full[k + len(inner) :])
    raise ConfigError(f"cannot find where {type(tokenizer).__name__} puts its special tokens")


def _sequences(
    token_lists: Iterator[list[int]], tokenizer: Any, max_length: int, pack: bool
) -> Iterator[list[int]]:
    """Token lists (no special tokens) → model sequences with special tokens, at most ``max_length`` long."""
    prefix, suffix = special_template(tokenizer)
    room = max_length - len(prefix) - len(suffix)
    if room < 1:
        raise ConfigError(f"data.max_length {max_length} leaves no room next to the special tokens")

    def wrap(ids: list[int]) -> list[int]:
        return [*prefix, *ids, *suffix]

    buf: list[int] = []
    for ids in token_lists:
        if pack:
            buf.extend(ids)
            while len(buf) >= room:
                yield wrap(buf[:room])
                buf = buf[room:]
        else:
            for s in range(0, max(len(ids), 1), room):
                yield wrap(ids[s : s + room])
    if pack and buf:
        yield wrap(buf)


@dataclass
class TokenStore:
    """A tokenised corpus on disk: ``tokens`` (memmap), ``offsets`` ([n+1]), ``counts`` ([vocab])."""

    root: Path
    tokens: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> list[int]:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]].astype(np.int64).tolist()

    @classmethod
    def open(cls, root: Path) -> TokenStore:
        meta = json.loads((root / "meta.json").read_text())
        tokens = np.memmap(root / "tokens.bin", dtype=np.dtype(meta["dtype"]), mode="r")
        return cls(root, tokens, np.load(root / "offsets.npy"), np.load(root / "counts.npy"))


def _file_stamps(files: Sequence[str]) -> list[str]:
    """Path, size and mtime of each local file (hub names and globs that are not files are kept as given),
    so that an edited data file gets a new token store instead of a stale one."""
    out = []
    for f in files:
        p = Path(f).expanduser()
        if p.is_file():
            st = p.stat()
            out.append(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}")
        else:
            out.append(f)
    return out


def _fingerprint(files: Sequence[str], cfg: CorpusSourceConfig, tokenizer: Any, max_length: int) -> str:
    h = hashlib.sha256()
    for stamp in _file_stamps(files):
        h.update(stamp.encode())
    vocab = tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    h.update(type(tokenizer).__name__.encode())
    opts = {
        "format": STORE_FORMAT,
        "hf": [cfg.hf_dataset, cfg.hf_config, cfg.hf_split, cfg.hf_column, _file_stamps(cfg.hf_data_files)]
        if files is cfg.corpus
        else None,
        "max_length": max_length,
        "pack": cfg.pack,
        "min_tokens": cfg.min_tokens,
        "lower": getattr(tokenizer, "do_lower_case", None),
    }
    h.update(json.dumps(opts, sort_keys=True).encode())
    return h.hexdigest()[:24]


def build_token_store(
    cfg: CorpusSourceConfig,
    tokenizer: Any,
    max_length: int,
    store_root: Path,
    files: Sequence[str] | None = None,
) -> TokenStore:
    """Tokenise the corpus (``files``, default: ``cfg.corpus`` + the HF dataset) into a cached store.

    One streaming pass: lines are tokenised a chunk at a time and their ids appended to ``tokens.bin``; only
    the offsets (8 bytes per sequence) and the vocabulary counts are held in memory.
    """
    files = cfg.corpus if files is None else list(files)
    missing = [str(f) for f in files if not Path(f).expanduser().is_file()]
    if missing:
        raise ConfigError(
            f"corpus file(s) not found: {missing} (text files, one document or sentence per line)"
        )
    root = store_root / _fingerprint(files, cfg, tokenizer, max_length)
    if (root / "meta.json").is_file():
        return TokenStore.open(root)
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    vocab_size = len(tokenizer)
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max else np.int32
    counts = np.zeros(vocab_size, dtype=np.int64)
    offsets = [0]

    def token_lists() -> Iterator[list[int]]:
        for chunk in _chunks(iter_lines(cfg, files if files is not cfg.corpus else None), CHUNK_LINES):
            enc = tokenizer(chunk, add_special_tokens=False, truncation=False, verbose=False)
            yield from enc["input_ids"]

    pending: list[list[int]] = []

    def flush(out: Any) -> None:
        if pending:
            arr = np.concatenate([np.asarray(p, dtype=dtype) for p in pending])
            out.write(arr.tobytes())
            counts[:] += np.bincount(arr, minlength=vocab_size)[:vocab_size]
            pending.clear()

    try:
        with open(tmp / "tokens.bin", "wb") as out:
            for seq in _sequences(token_lists(), tokenizer, max_length, cfg.pack):
                if len(seq) < cfg.min_tokens:
                    continue
                pending.append(seq)
                offsets.append(offsets[-1] + len(seq))
                if len(pending) >= CHUNK_LINES:
                    flush(out)
            flush(out)
    except BaseException:  # a failed or interrupted build leaves no half-written store behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if len(offsets) < 2:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(
            f"the corpus {list(files) or cfg.hf_dataset} holds no sequence of >= {cfg.min_tokens} tokens"
        )
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(tmp / "counts.npy", counts)
    (tmp / "meta.json").write_text(
        json.dumps({"format": STORE_FORMAT, "dtype": np.dtype(dtype).name, "sequences": len(offsets) - 1})
    )
    if root.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(root)
    return TokenStore.open(root)


class CorpusDataset(Dataset):
    """Sequences ``indices`` of a :class:`TokenStore`; items are ``{"idx", "input_ids"}`` (no labels).

    ``fixed_masks``: items carry ``mask_seed`` so that the collator masks them the same way every time
    (held-out evaluation must be comparable across evaluations and models). ``token_type_ids``: items carry
    all-zero ``token_type_ids`` — one segment, what a tokenizer that returns them (BERT) gives for one
    sentence — so that :class:`~bertdistill.data.loading.Collator` batches them like tokenised task text."""

    def __init__(
        self,
        store: TokenStore,
        indices: np.ndarray,
        fixed_masks: bool = False,
        token_type_ids: bool = False,
    ) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.fixed_masks = fixed_masks
        self.token_type_ids = token_type_ids
        self.mask_weights: Tensor | None = None
        """Per-vocabulary-id masking weights of a training corpus (set by :func:`corpus_datasets`)."""

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"idx": i, "input_ids": self.store.sequence(int(self.indices[i]))}
        if self.token_type_ids:
            item["token_type_ids"] = [0] * len(item["input_ids"])
        if self.fixed_masks:
            item["mask_seed"] = int(self.indices[i])
        return item

    @property
    def lengths(self) -> list[int]:
        return self.store.lengths[self.indices].tolist()

    def token_counts(self) -> np.ndarray:
        """Vocabulary counts of these sequences only (read chunk by chunk from the memmap)."""
        counts = np.zeros_like(self.store.counts)
        o = self.store.offsets
        for c in range(0, len(self.indices), CHUNK_LINES):
            part = [self.store.tokens[o[s] : o[s + 1]] for s in self.indices[c : c + CHUNK_LINES]]
            counts += np.bincount(np.concatenate(part).astype(np.int64), minlength=len(counts))[: len(counts)]
        return counts


def corpus_splits(
    cfg: CorpusConfig, tokenizer: Any, max_length: int, store_root: Path, seed: int
) -> tuple[CorpusDataset, CorpusDataset, np.ndarray]:
    """``(train, heldout, train_token_counts)``. The held-out slice is a seeded random ``heldout_fraction``
    of the sequences (at most ``max_heldout``), or the sequences of ``heldout_file``."""
    store = build_token_store(cfg, tokenizer, max_length, store_root)
    n = len(store)
    if cfg.heldout_file:
        h_store = build_token_store(cfg, tokenizer, max_length, store_root, files=[cfg.heldout_file])
        idx = np.arange(len(h_store))[: cfg.max_heldout]
        return CorpusDataset(store, np.arange(n)), CorpusDataset(h_store, idx, True), store.counts
    n_held = min(cfg.max_heldout, math.ceil(cfg.heldout_fraction * n)) if cfg.heldout_fraction else 0
    if n_held >= n:
        raise ConfigError(f"the corpus has only {n} sequences; lower method.heldout_fraction")
    perm = np.random.default_rng(seed).permutation(n)
    held, train = np.sort(perm[:n_held]), np.sort(perm[n_held:])
    held_ds = CorpusDataset(store, held, fixed_masks=True)
    counts = store.counts - held_ds.token_counts() if n_held else store.counts
    return CorpusDataset(store, train), held_ds, counts


# ----------------------------------------------------------------------------------------------- masking


def smoothed_token_probs(counts: np.ndarray, smoothing: float, special_ids: Sequence[int]) -> Tensor:
    """Per-vocabulary-id weight of a position holding that token: ``max(count, 1)^−smoothing`` (official
    DistilBERT / XLM ``token_probs``); special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, ...) get 0, so they
    are never chosen. Unnormalised: :func:`mlm_mask` normalises over the batch."""
    probs = np.maximum(counts.astype(np.float64), 1.0) ** (-smoothing)
    probs[[i for i in special_ids if 0 <= i < len(probs)]] = 0.0
    return torch.from_numpy(probs).float()


def mlm_mask(
    input_ids: Tensor,
    attention_mask: Tensor,
    token_probs: Tensor,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    replace_probs: tuple[float, float, float] = (0.8, 0.1, 0.1),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT masking with DistilBERT's (XLM's) frequency-smoothed choice of positions.

    ``n = round(mlm_probability · #maskable)`` positions of the whole batch (maskable = real, non-special
    tokens) are drawn without replacement with probability ∝ ``token_probs[id]``; of them a share
    ``replace_probs = (mask, keep, random)`` becomes ``[MASK]``, stays, or becomes a uniformly random id.
    Returns ``(masked_input_ids, mlm_labels)`` with labels −100 wherever nothing is to be predicted.
    """
    weights = token_probs.to(input_ids.device)[input_ids] * attention_mask.to(torch.float32)
    flat = weights.reshape(-1)
    n_maskable = int((flat > 0).sum())
    labels = torch.full_like(input_ids, -100)
    if n_maskable == 0:
        return input_ids.clone(), labels
    n = min(n_maskable, max(1, round(mlm_probability * n_maskable)))
    chosen = torch.multinomial(flat, n, replacement=False, generator=generator)
    pred = torch.zeros(flat.numel(), dtype=torch.bool, device=input_ids.device)
    pred[chosen] = True
    pred = pred.view_as(input_ids)
    labels[pred] = input_ids[pred]
    kind = torch.multinomial(
        torch.tensor(replace_probs, dtype=torch.float), n, replacement=True, generator=generator
    ).to(input_ids.device)
    real = input_ids[pred]
    rand = torch.randint(vocab_size, (n,), generator=generator).to(input_ids.device)
    new = torch.where(kind == 0, torch.full_like(real, mask_token_id), torch.where(kind == 1, real, rand))
    out = input_ids.clone()
    out[pred] = new
    return out, labels


class MLMCollator:
    """Pads like :class:`~bertdistill.data.loading.Collator`, then masks: ``inputs.input_ids`` is the
    corrupted sequence, ``mlm_labels`` the original ids at the chosen positions (−100 elsewhere).

    Dynamic masking: each batch is masked when it is formed, with a generator seeded by the run's seed and
    the batch's example ids — every new batch (each epoch reshuffles) gets new masks, and a resumed run
    reproduces them exactly. (The global RNG would not be resumable: the loader collates one batch ahead of
    the step that writes a checkpoint.) Held-out items carry ``mask_seed``: fixed masks for every evaluation."""

    def __init__(self, tokenizer: Any, token_probs: Tensor, cfg: CorpusConfig, seed: int = 0) -> None:
        self.seed = seed
        if tokenizer.mask_token_id is None:
            raise ConfigError("masked-LM training needs a tokenizer with a mask token ([MASK])")
        self.pad = Collator(tokenizer.pad_token_id or 0)
        self.token_probs = token_probs
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.vocab_size = len(tokenizer)
        self.cfg = cfg

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.pad(items)
        key = "mask_seed" if "mask_seed" in items[0] else "idx"
        ids_key = np.asarray([self.seed, key == "mask_seed", *(int(it[key]) for it in items)], dtype=np.int64)
        digest = hashlib.sha256(ids_key.tobytes()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        ids, labels = mlm_mask(
            batch["inputs"]["input_ids"],
            batch["inputs"]["attention_mask"],
            self.token_probs,
            self.mask_token_id,
            self.vocab_size,
            self.cfg.mlm_probability,
            (self.cfg.mask_token_prob, self.cfg.keep_token_prob, self.cfg.random_token_prob),
            gen,
        )
        batch["inputs"]["input_ids"] = ids
        batch["mlm_labels"] = labels
        return batch


def corpus_datasets(
    cfg: CorpusConfig, run: Any, tokenizer: Any, subsample: bool = True
) -> dict[str, Dataset]:
    """The datasets of a raw-text run — ``train`` and (when there is a held-out slice) ``eval``. The training
    set carries the smoothed masking weights of the vocabulary computed from its token counts
    (``train.mask_weights``, read by :class:`MLMCollator`). With ``subsample``, ``data.max_train_examples`` /
    ``data.max_eval_examples`` cap the sequences (seeded)."""
    root = default_store_root(cfg, run.teacher.cache_dir)
    train, held, counts = corpus_splits(cfg, tokenizer, run.data.max_length, root, cfg.heldout_seed)
    rng = np.random.default_rng(run.train.seed)
    if subsample and run.data.max_train_examples and run.data.max_train_examples < len(train):
        train.indices = np.sort(rng.choice(train.indices, run.data.max_train_examples, replace=False))
    if subsample and run.data.max_eval_examples and run.data.max_eval_examples < len(held):
        held.indices = held.indices[: run.data.max_eval_examples]
    train.mask_weights = smoothed_token_probs(counts, cfg.mlm_smoothing, tokenizer.all_special_ids)
    out: dict[str, Dataset] = {"train": train}
    if len(held):
        out["eval"] = held
    return out


def default_store_root(cfg: CorpusSourceConfig, cache_dir: str | None) -> Path:
    if cfg.store_dir:
        return Path(cfg.store_dir).expanduser()
    base = Path(cache_dir).expanduser() if cache_dir else None
    if base is None:
        base = Path(os.environ.get("BERTDISTILL_CACHE", "~/.cache/bertdistill")).expanduser()
    return base / "corpus_store"


__all__ = [
    "CorpusConfig",
    "CorpusDataset",
    "CorpusSourceConfig",
    "MLMCollator",
    "TokenStore",
    "build_token_store",
    "corpus_datasets",
    "corpus_splits",
    "default_store_root",
    "iter_lines",
    "mlm_mask",
    "smoothed_token_probs",
]
