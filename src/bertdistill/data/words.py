"""Word-level text for students with their own vocabulary (Tang et al.'s BiLSTM): a word splitter, a
vocabulary saved as ``vocab.json``, word-vector files (GloVe / word2vec text) and the batch layout of word
pairs.

* **Splitting** (:func:`split_words`): lower-cased (by default), PTB-style — punctuation is its own word and
  clitics are split off (``don't`` → ``do n't``, ``it's`` → ``it 's``), as GloVe 6B and the GLUE SST-2 files
  are tokenised. Special tokens in brackets (``[MASK]``, ``[UNK]``, …) stay whole and keep their case, so the
  ``[MASK]`` words of augmented text (:mod:`bertdistill.data.augment_tang`) are one word with one embedding.
* **Vocabulary** (:class:`WordVocab`): id 0 = ``<pad>``, id 1 = ``<unk>``, then every word seen at least
  ``min_count`` times in the texts it is built from (the training split plus the augmented rows; never dev or
  test), most frequent first, ties alphabetical — so the same data always gives the same ids. A word not in
  the vocabulary (OOV) maps to ``<unk>``; an empty text is one ``<unk>``.
* **Vectors** (:func:`load_word_vectors`): rows of a GloVe/word2vec *text* file (``word v1 … vd``; an optional
  word2vec header line ``count dim``; ``.gz`` read directly) for the vocabulary's words. Words without a vector
  (OOV for the file) are drawn from U(−0.25, 0.25) — the official code's ``uniform_unk_init`` — from a seeded
  generator; ``<pad>`` is zero. A malformed line is a :class:`~bertdistill.config.ConfigError` naming the file
  and the line number.
* **Pairs** are one sequence ``a + b`` with ``token_type_ids`` 0 / 1 (the engine's collator pads them like any
  tokens); :func:`split_segments` re-pads the two sentences for a siamese encoder.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import ConfigError
from .loading import Examples, TokenizedDataset

PAD, UNK = "<pad>", "<unk>"
VOCAB_FILE = "vocab.json"
VOCAB_FORMAT = 1
UNK_INIT_RANGE = 0.25
"""OOV vectors ~ U(−0.25, 0.25) (official d-bert ``uniform_unk_init``; Kim 2014)."""

_SPECIAL = re.compile(r"(\[[A-Z]+\])")
_CLITIC_NT = re.compile(r"(\w)(n't)\b", re.IGNORECASE)
_CLITIC = re.compile(r"(\w)('(?:s|re|ve|ll|d|m))\b", re.IGNORECASE)
_WORD = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\w+|[^\w\s]", re.IGNORECASE)


def split_words(text: str, lowercase: bool = True) -> list[str]:
    """PTB-style words of ``text`` (see the module doc); bracketed special tokens stay whole."""
    out: list[str] = []
    for k, part in enumerate(_SPECIAL.split(text)):
        if k % 2:  # a special token
            out.append(part)
            continue
        if lowercase:
            part = part.lower()
        part = _CLITIC.sub(r"\1 \2", _CLITIC_NT.sub(r"\1 \2", part))
        out += _WORD.findall(part)
    return out


# ----------------------------------------------------------------------------------------------- vocabulary


class WordVocab:
    """Words ↔ ids; ``<pad>`` = 0, ``<unk>`` = 1. The student's tokenizer: saved next to the model."""

    pad_token_id = 0
    unk_token_id = 1

    def __init__(self, words: Sequence[str], lowercase: bool = True) -> None:
        if list(words[:2]) != [PAD, UNK]:
            words = [PAD, UNK, *[w for w in words if w not in (PAD, UNK)]]
        self.words = list(words)
        self.lowercase = lowercase
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ConfigError("a word vocabulary cannot list a word twice")

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        min_count: int = 1,
        lowercase: bool = True,
        max_size: int | None = None,
    ) -> WordVocab:
        """Every word of ``texts`` seen ≥ ``min_count`` times, most frequent first (ties alphabetical), at most
        ``max_size`` words besides ``<pad>`` and ``<unk>``."""
        if min_count < 1:
            raise ConfigError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(w for t in texts for w in split_words(t, lowercase))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept[:max_size] if max_size is not None else kept, lowercase)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Word ids of ``text`` (OOV → ``<unk>``; an empty text → one ``<unk>``), cut to ``max_length``."""
        ids = [self.index.get(w, self.unk_token_id) for w in split_words(text, self.lowercase)]
        if max_length:
            ids = ids[:max_length]
        return ids or [self.unk_token_id]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[i] for i in ids]

    def encode_row(self, row: Sequence[str], max_length: int | None = None) -> tuple[list[int], list[int]]:
        """One example (1 or 2 texts): ids ``a`` or ``a + b`` and segment ids 0 / 1, each text cut to
        ``max_length`` words."""
        parts = [self.encode(t, max_length) for t in row]
        ids = [i for p in parts for i in p]
        segments = [k for k, p in enumerate(parts) for _ in p]
        return ids, segments

    def save_pretrained(self, out_dir: str | os.PathLike[str]) -> None:
        data = {"format": VOCAB_FORMAT, "lowercase": self.lowercase, "words": self.words}
        (Path(out_dir) / VOCAB_FILE).write_text(json.dumps(data, ensure_ascii=False))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> WordVocab:
        f = Path(path) / VOCAB_FILE
        if not f.is_file():
            raise ConfigError(f"{path}: no {VOCAB_FILE} (not a word-level student dir)")
        data = json.loads(f.read_text())
        return cls(data["words"], bool(data.get("lowercase", True)))


# ----------------------------------------------------------------------------------------------- datasets


@dataclass
class WordDataset(TokenizedDataset):
    """A :class:`TokenizedDataset` of word ids (``token_type_ids`` mark the two texts of a pair) that carries
    the vocabulary it was encoded with."""

    vocab: WordVocab | None = None


def word_dataset(
    examples: Examples,
    vocab: WordVocab,
    max_length: int | None,
    labels: Sequence[int | float] | None = None,
    teacher: TokenizedDataset | None = None,
) -> WordDataset:
    """``examples`` as word ids (``labels`` overrides ``examples.labels``, e.g. with unlabelled rows)."""
    ids, segments = [], []
    for row in examples.texts:
        a, s = vocab.encode_row(row, max_length)
        ids.append(a)
        segments.append(s)
    pair = bool(examples.texts) and len(examples.texts[0]) == 2
    return WordDataset(
        ids,
        segments if pair else None,
        list(labels) if labels is not None else examples.labels,
        examples.texts,
        teacher=teacher,
        vocab=vocab,
    )


def split_segments(
    input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The two texts of a batch of pairs laid out as ``a + b`` (segments 0 / 1), each re-padded on its own:
    ``((ids_a, lengths_a), (ids_b, lengths_b))``; padding positions hold id 0."""
    real = attention_mask.bool()
    len_a = (real & (token_type_ids == 0)).sum(1)
    len_b = (real & (token_type_ids == 1)).sum(1)
    ids_a = _window(input_ids, torch.zeros_like(len_a), len_a)
    ids_b = _window(input_ids, len_a, len_b)
    return (ids_a, len_a), (ids_b, len_b)


def _window(ids: Tensor, start: Tensor, length: Tensor) -> Tensor:
    width = max(int(length.max()) if length.numel() else 0, 1)
    pos = torch.arange(width, device=ids.device).unsqueeze(0)
    idx = (start.unsqueeze(1) + pos).clamp(max=ids.shape[1] - 1)
    out = ids.gather(1, idx)
    return out.masked_fill(pos >= length.unsqueeze(1), 0)


# ----------------------------------------------------------------------------------------------- vectors


@dataclass
class WordVectors:
    """An embedding matrix for a vocabulary: ``weight[i]`` is word i's vector."""

    weight: Tensor
    found: int
    """Vocabulary words (besides ``<pad>`` / ``<unk>``) that had a vector in the file."""
    path: str

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def describe(self, vocab: WordVocab) -> dict[str, Any]:
        n = max(1, len(vocab) - 2)
        return {
            "vectors": self.path,
            "dim": self.dim,
            "found": self.found,
            "coverage": round(self.found / n, 4),
        }


def _opener(path: Path) -> Callable[..., Any]:
    return gzip.open if path.suffix == ".gz" else open


def vector_dim(path: str | os.PathLike[str]) -> int:
    """The vector width of a GloVe/word2vec text file (its first vector line)."""
    p = Path(path).expanduser()
    for lineno, word, values in _vector_lines(p):
        del lineno, word
        return len(values)
    raise ConfigError(f"word-vector file {str(p)!r} has no vectors")


def _vector_lines(path: Path) -> Iterable[tuple[int, str, list[str]]]:
    """``(line number, word, value strings)`` of every vector line; a word2vec header is skipped."""
    if not path.is_file():
        raise ConfigError(f"word-vector file {str(path)!r} not found")
    with _opener(path)(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            items = line.rstrip("\n").rstrip().split(" ")
            if lineno == 1 and len(items) == 2 and all(x.isdigit() for x in items):
                continue  # word2vec header: "<count> <dim>"
            if not items or not line.strip():
                continue
            yield lineno, items[0], items[1:]


def load_word_vectors(
    path: str | os.PathLike[str],
    vocab: WordVocab,
    dim: int | None = None,
    seed: int = 0,
    init_range: float = UNK_INIT_RANGE,
) -> WordVectors:
    """The vectors of ``vocab``'s words from a GloVe/word2vec text file (see the module doc). ``dim``: the
    expected width (default: the file's). A lower-cased vocabulary also takes the vector of a cased file word
    (the first one seen, i.e. the most frequent in GloVe/word2vec order) when the lower-case form has none."""
    p = Path(path).expanduser()
    width = dim or vector_dim(p)
    g = torch.Generator().manual_seed(seed)
    weight = torch.empty(len(vocab), width).uniform_(-init_range, init_range, generator=g)
    weight[vocab.pad_token_id] = 0.0
    exact: set[int] = set()
    folded: set[int] = set()
    for lineno, word, values in _vector_lines(p):
        if len(values) != width:
            raise ConfigError(
                f"{p}:{lineno}: a vector of {len(values)} values, expected {width} "
                f"(line starts {' '.join([word, *values[:2]])[:60]!r}); is this a GloVe/word2vec text file?"
            )
        i = vocab.index.get(word)
        fold = i is None and vocab.lowercase
        if fold:
            i = vocab.index.get(word.lower())
        if i is None or i in exact or (fold and i in folded):
            continue
        try:
            weight[i] = torch.tensor([float(v) for v in values])
        except ValueError:
            bad = next(v for v in values if not _is_float(v))
            raise ConfigError(f"{p}:{lineno}: {bad!r} is not a number (word {word!r})") from None
        (folded if fold else exact).add(i)
    found = len((exact | folded) - {vocab.pad_token_id, vocab.unk_token_id})
    return WordVectors(weight, found, str(p))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


__all__ = [
    "PAD",
    "UNK",
    "UNK_INIT_RANGE",
    "VOCAB_FILE",
    "WordDataset",
    "WordVectors",
    "WordVocab",
    "load_word_vectors",
    "split_segments",
    "split_words",
    "vector_dim",
    "word_dataset",
]
