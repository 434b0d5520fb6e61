"""TinyBERT-style data augmentation (Jiao et al. 2020, §3.3 and Algorithm 1; official ``data_augmentation.py``).

For every word ``w`` of a sentence (the tokenizer's basic word split, lower-cased for uncased models) that is
alphabetic and not a stop word (:data:`STOP_WORDS`) a candidate set ``C(w)`` of up to K words is built once:

* ``w`` is a single WordPiece → the K most likely tokens of a masked LM at ``w``'s position, the input
  being ``[CLS] sentence-with-w-masked [SEP] original-sentence [SEP]`` (official layout; segment ids 0 / 1),
  ``##`` continuation pieces dropped;
* ``w`` splits into several pieces → its K nearest GloVe neighbours by cosine similarity.

A masked LM with a byte-level BPE (RoBERTa, ``Ġ``) or SentencePiece (XLM-R, ALBERT, DeBERTa-v3, ``▁``) tokenizer
works too (ours; the paper's MLM is BERT's): words are split from the normalised text (runs of word characters,
single punctuation marks, as BERT's basic tokenizer does), a word is single-piece when the tokenizer gives it one
token in the sentence, the MLM's input is the tokenizer's own pair encoding of the sentence with itself,
the first copy with the word's token masked (its special tokens and segment ids), and a candidate is a predicted token
that starts a word the way the masked one does (with the word-start mark; for a first word that has none, an
unmarked token that also starts words after a space), decoded to text.

Without a masked LM (``mlm=None``; e.g. offline with a teacher that has no MLM head, like MiniLM-L6) every
candidate word takes the GloVe path — a fallback of ours, not the paper's method; provenance records it.

Then N times: every candidate word is replaced, with probability p, by a uniform choice from ``C(w)``; a
new sentence not yet produced is kept. The original comes first. Sentence pairs: each text column is
augmented in turn with the other column(s) held at the original text. Output examples carry **no labels**:
the teacher labels them (through the teacher cache) when a ``tinybert`` task stage trains on them.

Batched: the masked sequences of many sentences go through the MLM in one forward, and only the masked
positions go through the LM head. Deterministic under a seed (one RNG per example, seeded from
``(seed, example index)``, so the result does not depend on batching).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ConfigError
from ..mlm_head import split_mlm
from ..protocol import model_inputs
from .loading import Examples
from .tasks import TaskSpec

# The official TinyBERT ``StopWordsList``: NLTK's English list without its question words (what which who
# whom when where why how), plus "'s" and "'re".
STOP_WORDS: frozenset[str] = frozenset(
    [
        "i",
        "me",
        "my",
        "myself",
        "we",
        "our",
        "ours",
        "ourselves",
        "you",
        "you're",
        "you've",
        "you'll",
        "you'd",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "he",
        "him",
        "his",
        "himself",
        "she",
        "she's",
        "her",
        "hers",
        "herself",
        "it",
        "it's",
        "its",
        "itself",
        "they",
        "them",
        "their",
        "theirs",
        "themselves",
        "this",
        "that",
        "that'll",
        "these",
        "those",
        "am",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "have",
        "has",
        "had",
        "having",
        "do",
        "does",
        "did",
        "doing",
        "a",
        "an",
        "the",
        "and",
        "but",
        "if",
        "or",
        "because",
        "as",
        "until",
        "while",
        "of",
        "at",
        "by",
        "for",
        "with",
        "about",
        "against",
        "between",
        "into",
        "through",
        "during",
        "before",
        "after",
        "above",
        "below",
        "to",
        "from",
        "up",
        "down",
        "in",
        "out",
        "on",
        "off",
        "over",
        "under",
        "again",
        "further",
        "then",
        "once",
        "here",
        "there",
        "all",
        "any",
        "both",
        "each",
        "few",
        "more",
        "most",
        "other",
        "some",
        "such",
        "no",
        "nor",
        "not",
        "only",
        "own",
        "same",
        "so",
        "than",
        "too",
        "very",
        "s",
        "t",
        "can",
        "will",
        "just",
        "don",
        "don't",
        "should",
        "should've",
        "now",
        "d",
        "ll",
        "m",
        "o",
        "re",
        "ve",
        "y",
        "ain",
        "aren",
        "aren't",
        "couldn",
        "couldn't",
        "didn",
        "didn't",
        "doesn",
        "doesn't",
        "hadn",
        "hadn't",
        "hasn",
        "hasn't",
        "haven",
        "haven't",
        "isn",
        "isn't",
        "ma",
        "mightn",
        "mightn't",
        "mustn",
        "mustn't",
        "needn",
        "needn't",
        "shan",
        "shan't",
        "shouldn",
        "shouldn't",
        "wasn",
        "wasn't",
        "weren",
        "weren't",
        "won",
        "won't",
        "wouldn",
        "wouldn't",
        "'s",
        "'re",
    ]
)
"""Words never replaced (exactly the official list, 171 words + 's 're)."""

# official defaults of N (tries per example) by task
DEFAULT_TRIES = {
    "cola": 30,
    "mnli": 10,
    "mrpc": 30,
    "sst2": 20,
    "stsb": 30,
    "qqp": 10,
    "qnli": 20,
    "rte": 30,
}

_ALPHA = re.compile(r"^[a-z]+$")


def is_candidate_word(word: str) -> bool:
    """Alphabetic (official ``_is_valid``: only a–z after lower-casing) and not a stop word."""
    low = word.lower()
    return bool(_ALPHA.match(low)) and low not in STOP_WORDS


@dataclass
class AugmentConfig:
    p: float = 0.4
    """Probability of replacing each candidate word in one try."""
    k: int = 15
    """Candidates per word (the official ``M``)."""
    n: int = 20
    """Tries per example (the official ``N``; SST-2 20, MRPC 30): at most n new sentences."""
    seed: int = 42
    batch_size: int = 64
    """Masked sequences per MLM forward."""
    max_length: int = 512
    """MLM input limit (both segments); words masked beyond it keep no MLM candidates (official)."""
    max_glove_words: int = 100_000
    """Only the first (most frequent) GloVe words are read (official: 100k)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"augment p must be in [0, 1], got {self.p}")
        if self.k < 1 or self.n < 0 or self.batch_size < 1:
            raise ConfigError("augment needs k >= 1, n >= 0 and batch_size >= 1")
        if self.max_length < 8:
            raise ConfigError(f"augment max_length must be >= 8, got {self.max_length}")


class GloVeNeighbours:
    """Nearest neighbours by cosine similarity in a GloVe text file (``word v1 … vd``, optionally .gz)."""

    def __init__(self, path: str | Path, max_words: int = 100_000) -> None:
        self.path = str(path)
        words: list[str] = []
        vecs: list[np.ndarray] = []
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"GloVe file {str(p)!r} not found")
        opener: Callable[..., Any] = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as f:
            for line in f:
                items = line.rstrip().split(" ")
                if len(items) < 3:
                    continue
                words.append(items[0])
                vecs.append(np.asarray(items[1:], dtype=np.float32))
                if len(words) >= max_words:
                    break
        if not words:
            raise ConfigError(f"GloVe file {str(p)!r} has no vectors")
        emb = np.stack(vecs)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        self.emb = emb / np.maximum(norm, 1e-12)
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self._memo: dict[tuple[str, int], list[str]] = {}

    def __len__(self) -> int:
        return len(self.words)

    def neighbours(self, word: str, k: int) -> list[str]:
        """The k most similar words (the word itself excluded); [] when the word has no vector. A title-case
        word gets title-case neighbours (official)."""
        key = (word.lower(), k)
        out = self._memo.get(key)
        if out is None:
            out = self._search(*key)
            self._memo[key] = out
        return [w.title() for w in out] if word.istitle() else list(out)

    def _search(self, word: str, k: int) -> list[str]:
        i = self.index.get(word)
        if i is None:
            return []
        sim = self.emb @ self.emb[i]
        sim[i] = -np.inf
        k = min(k, len(sim) - 1)
        part = np.argpartition(-sim, k - 1)[:k] if k < len(sim) else np.arange(len(sim))
        top = sorted(
            part.tolist(), key=lambda j: (-float(sim[j]), j)
        )  # by similarity, ties by frequency rank
        return [self.words[j] for j in top]


@dataclass
class _Word:
    words: list[str]
    candidates: dict[int, list[str]] = field(default_factory=dict)


class Augmenter:
    """TinyBERT word replacement with a masked LM (single-piece words) and GloVe (multi-piece words)."""

    def __init__(
        self,
        mlm: nn.Module | None,
        tokenizer: Any,
        glove: GloVeNeighbours | None,
        cfg: AugmentConfig | None = None,
    ) -> None:
        if mlm is None and glove is None:
            raise ConfigError("augmentation needs a masked LM (--mlm), GloVe vectors (--glove), or both")
        self.mlm = mlm.eval() if mlm is not None else None
        self.tok = tokenizer
        self.glove = glove
        self.cfg = cfg or AugmentConfig()
        self.stats = {"mlm_words": 0, "glove_words": 0, "kept_words": 0}
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._special = special
        kind = non_wordpiece(tokenizer)
        self.marker = word_start_mark(tokenizer) if kind is not None else None
        if kind is not None and self.marker is None:
            raise ConfigError(
                f"TinyBERT-style augmentation reads words the way a WordPiece tokenizer splits them (a first piece "
                f"and ## continuations, as the paper's BERT) or by the word-start mark of a byte-level BPE or "
                f"SentencePiece tokenizer ('Ġgreat', '▁great'); this tokenizer ({type(tokenizer).__name__}, {kind}) "
                "marks neither, so its words would be none the augmenter can replace. Give a BERT-family --mlm "
                "(or --tokenizer), or use --style tang"
            )
        # whether a sentence's first word carries the mark too (add_prefix_space, SentencePiece's ▁), and the
        # tokens, which say whether an unmarked one also starts words after a space
        self.first_marked = False
        self._vocab: set[str] = set()
        if self.marker is not None:
            first = tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False)["input_ids"])
            self.first_marked = bool(first) and first[0].startswith(self.marker)
            self._vocab = set(tokenizer.get_vocab())
        if mlm is not None and getattr(tokenizer, "mask_token_id", None) is None:
            raise ConfigError(
                "the MLM's tokenizer has no [MASK] token; --mlm must be a masked language model"
            )

    # ------------------------------------------------------------------ words
    def split_words(self, sentence: str) -> list[str]:
        """The tokenizer's basic word split (normaliser — lower-casing, accents — then pre-tokeniser). A BPE or
        SentencePiece tokenizer's pre-tokens carry its word-start mark: there the normalised text is split into
        runs of word characters and single punctuation marks instead."""
        backend: Any = getattr(self.tok, "backend_tokenizer", None)
        if self.marker is not None:
            text = backend.normalizer.normalize_str(sentence) if backend.normalizer is not None else sentence
            return _WORDS.findall(text.replace(self.marker, " "))
        if backend is not None:
            text = backend.normalizer.normalize_str(sentence) if backend.normalizer is not None else sentence
            if backend.pre_tokenizer is None:
                return text.split()
            return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
        basic = getattr(self.tok, "basic_tokenizer", None)
        if basic is not None:
            return list(basic.tokenize(sentence))
        return sentence.split()

    def _pieces(self, words: list[str]) -> list[list[int]]:
        if self.marker is not None:
            return self._marked_pieces(words)
        enc = self.tok(words, is_split_into_words=True, add_special_tokens=False)
        ids: list[int] = enc["input_ids"]
        out: list[list[int]] = [[] for _ in words]
        for pos, w in enumerate(enc.word_ids()):
            if w is not None:
                out[w].append(ids[pos])
        return out

    def _marked_pieces(self, words: list[str]) -> list[list[int]]:
        """The token ids of each word of ``" ".join(words)`` by character offsets; a token that covers only the
        space before a word (a lone word-start mark) belongs to that word."""
        enc = self.tok(" ".join(words), add_special_tokens=False, return_offsets_mapping=True)
        ends, at = [], 0
        for w in words:
            at += len(w)
            ends.append(at)
            at += 1
        out: list[list[int]] = [[] for _ in words]
        wi = 0
        for i, (start, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            while wi < len(words) - 1 and start >= ends[wi]:
                wi += 1
            out[wi].append(i)
        return out

    # ------------------------------------------------------------------ candidates
    def candidates(self, sentences: Sequence[str]) -> list[_Word]:
        """Candidate replacements of every candidate word of every sentence (batched MLM)."""
        cfg, tok = self.cfg, self.tok
        parsed: list[_Word] = []
        jobs: list[
            tuple[int, int, list[int], list[int], int]
        ] = []  # (sentence, word, ids, segments, mask pos)
        for si, sent in enumerate(sentences):
            words = self.split_words(sent)
            item = _Word(words)
            parsed.append(item)
            pieces = self._pieces(words) if words else []
            flat = [i for p in pieces for i in p]
            start = 1  # after [CLS]
            for wi, (w, p) in enumerate(zip(words, pieces, strict=True)):
                pos = start
                start += len(p)
                if not is_candidate_word(w) or not p:
                    continue
                if len(p) > 1 or self.mlm is None:  # no MLM: GloVe for every word (an offline fallback)
                    item.candidates[wi] = (self.glove.neighbours(w, cfg.k) if self.glove else []) or [w]
                    self.stats["glove_words" if len(item.candidates[wi]) > 1 else "kept_words"] += 1
                    continue
                if self.marker is not None:
                    job = self._marked_job(words, sum(len(q) for q in pieces[:wi]))
                    if job is None:
                        item.candidates[wi] = [w]  # masked position cut off (official: no candidates)
                        self.stats["kept_words"] += 1
                    else:
                        jobs.append((si, wi, *job))
                    continue
                a = [tok.cls_token_id, *flat, tok.sep_token_id]
                a[pos] = tok.mask_token_id
                b = [*flat, tok.sep_token_id]
                ids = (a + b)[: cfg.max_length]
                if pos >= len(ids) - 1:
                    item.candidates[wi] = [w]  # masked position cut off (official: no candidates)
                    self.stats["kept_words"] += 1
                    continue
                seg = ([0] * len(a) + [1] * len(b))[: cfg.max_length]
                jobs.append((si, wi, ids, seg, pos))
        for chunk in _chunks(jobs, cfg.batch_size):
            top = self._mlm_top_k([j[2] for j in chunk], [j[3] for j in chunk], [j[4] for j in chunk])
            for (si, wi, *_), ids in zip(chunk, top, strict=True):
                w = parsed[si].words[wi]
                if self.marker is not None:
                    toks = self._marked_words(ids, starts=wi > 0 or self.first_marked)
                else:
                    toks = [
                        t
                        for t, i in zip(tok.convert_ids_to_tokens(ids), ids, strict=True)
                        if not t.startswith("##") and i not in self._special
                    ]
                parsed[si].candidates[wi] = toks or [w]
                self.stats["mlm_words" if toks else "kept_words"] += 1
        return parsed

    def _marked_job(self, words: list[str], piece: int) -> tuple[list[int], list[int], int] | None:
        """``(ids, segment ids, masked position)``: the tokenizer's own pair encoding of the sentence with itself
        (RoBERTa: ``<s> A </s></s> B </s>``), the first copy's token number ``piece`` (the word's one token)
        replaced by the mask id — the sentence is not tokenised again around a mask — cut at ``max_length``;
        ``None`` when the masked position is cut off."""
        sentence = " ".join(words)
        enc = self.tok(sentence, sentence)
        ids = list(enc["input_ids"])
        first = [i for i, s in enumerate(enc.sequence_ids()) if s == 0]
        pos = first[piece]
        ids[pos] = self.tok.mask_token_id
        segs = list(enc.get("token_type_ids") or [0] * len(ids))[: self.cfg.max_length]
        ids = ids[: self.cfg.max_length]
        return None if pos >= len(ids) - 1 else (ids, segs, pos)

    def _marked_words(self, ids: list[int], starts: bool) -> list[str]:
        """Predicted tokens that begin a word as the masked one did (``starts``: with the word-start mark),
        decoded to their text; specials and pieces that are not a whole candidate word dropped. An unmarked
        first word's candidates are unmarked tokens that also start a word after a space (``Ġthe`` for ``the``):
        a token without the mark is otherwise as likely the middle of a word (``ny`` of ``funny``)."""
        words = []
        for t, i in zip(self.tok.convert_ids_to_tokens(ids), ids, strict=True):
            if i in self._special or t.startswith(str(self.marker)) != starts:
                continue
            if not starts and f"{self.marker}{t}" not in self._vocab:
                continue
            word = self.tok.convert_tokens_to_string([t]).strip()  # a partial UTF-8 byte decodes to U+FFFD
            if word and "\ufffd" not in word and not any(c.isspace() for c in word):
                words.append(word)
        return words

    @torch.no_grad()
    def _mlm_top_k(self, ids: list[list[int]], segs: list[list[int]], pos: list[int]) -> list[list[int]]:
        assert self.mlm is not None
        n, width = len(ids), max(len(x) for x in ids)
        device = next(self.mlm.parameters()).device
        inp = torch.full((n, width), self.tok.pad_token_id or 0, dtype=torch.long)
        tt = torch.zeros((n, width), dtype=torch.long)
        att = torch.zeros((n, width), dtype=torch.long)
        for r, (x, s) in enumerate(zip(ids, segs, strict=True)):
            inp[r, : len(x)] = torch.tensor(x)
            tt[r, : len(s)] = torch.tensor(s)
            att[r, : len(x)] = 1
        inputs = {
            "input_ids": inp.to(device),
            "attention_mask": att.to(device),
            "token_type_ids": tt.to(device),
        }
        rows = torch.arange(n, device=device)
        at = torch.tensor(pos, device=device)
        parts = split_mlm(self.mlm)
        if (
            parts is not None
        ):  # the LM head on the masked positions only (BERT, RoBERTa, ELECTRA, ALBERT, ...)
            body, head = parts
            hidden = body(**model_inputs(body, inputs)).last_hidden_state
            logits = head(hidden[rows, at])
        else:
            logits = self.mlm(**model_inputs(self.mlm, inputs)).logits[rows, at]
        return logits.float().topk(self.cfg.k, dim=-1).indices.cpu().tolist()  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ sentences
    def variants(self, item: _Word, rng: random.Random, original: str) -> list[str]:
        """Algorithm 1: the original, then up to n new sentences (duplicates dropped)."""
        out = [original]
        seen = {original, " ".join(item.words)}
        for _ in range(self.cfg.n):
            new = list(item.words)
            for wi, cands in item.candidates.items():
                choice = rng.choice(cands)  # official order: draw the candidate, then the coin
                if rng.random() < self.cfg.p:
                    new[wi] = choice
            s = " ".join(new)
            if s not in seen:
                seen.add(s)
                out.append(s)
        return out

    def augment_texts(
        self, texts: Sequence[tuple[str, ...]], first_index: int = 0
    ) -> list[list[tuple[str, ...]]]:
        """Augmented rows of each example (1- or 2-tuples of text); example i uses RNG ``(seed, first_index+i)``."""
        n_cols = len(texts[0]) if texts else 0
        per_col = [self.candidates([t[c] for t in texts]) for c in range(n_cols)]
        out: list[list[tuple[str, ...]]] = []
        for i, t in enumerate(texts):
            rng = random.Random(self.cfg.seed * 1_000_003 + first_index + i)
            rows = [tuple(t)]
            seen = {tuple(t)}
            for c in range(n_cols):
                for v in self.variants(per_col[c][i], rng, t[c])[1:]:
                    row = tuple(v if j == c else t[j] for j in range(n_cols))
                    if row not in seen:
                        seen.add(row)
                        rows.append(row)
            out.append(rows)
        return out


_WORDS = re.compile(r"\w+|[^\w\s]")


def word_start_mark(tokenizer: Any) -> str | None:
    """The mark a BPE / SentencePiece tokenizer puts on a word that follows a space (``Ġ`` byte-level, ``▁``
    Metaspace), read from its own normaliser and pre-tokeniser; ``None`` when it puts none."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    text = backend.normalizer.normalize_str(" a") if backend.normalizer is not None else " a"
    pre = backend.pre_tokenizer
    words = [w for w, _ in pre.pre_tokenize_str(text)] if pre is not None else text.split()
    last = words[-1] if words else ""
    mark = last[:-1] if len(last) > 1 and last.endswith("a") else ""  # what stands for the space before "a"
    return mark if mark.strip() else None


def non_wordpiece(tokenizer: Any) -> str | None:
    """None for a WordPiece tokenizer (fast or slow); else what it is (e.g. ``BPE``, ``Unigram``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        kind = type(backend.model).__name__
        return None if kind == "WordPiece" else kind
    return None if hasattr(tokenizer, "wordpiece_tokenizer") else type(tokenizer).__name__


def load_augmenter(
    mlm: str | None,
    glove: str | None,
    cfg: AugmentConfig,
    tokenizer: str | None = None,
    trust_remote_code: bool = False,
) -> Augmenter:
    """An :class:`Augmenter` from paths: a masked LM (HF dir / hub name; its tokenizer splits the words) and/or
    a GloVe file; without an MLM, ``tokenizer`` names the tokenizer (GloVe-only fallback)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from ..hub import UNTRAINED_ATTR, from_pretrained

    tok_src = tokenizer or mlm
    if not tok_src:
        raise ConfigError(
            "augment: give --mlm (a masked LM), or --glove with --tokenizer (GloVe-only fallback)"
        )
    tok = from_pretrained(AutoTokenizer, tok_src, trust_remote_code=trust_remote_code)
    model = (
        from_pretrained(AutoModelForMaskedLM, mlm, trust_remote_code=trust_remote_code, mark_untrained=True)
        if mlm
        else None
    )
    missing = getattr(model, UNTRAINED_ATTR, None)
    if missing:
        raise ConfigError(
            f"augment --mlm {mlm!r} has no trained masked-LM head (its checkpoint lacks {missing[:3]}"
            f"{' …' if len(missing) > 3 else ''}, so its word predictions would be random): give a masked LM"
        )
    vectors = GloVeNeighbours(glove, cfg.max_glove_words) if glove else None
    return Augmenter(model, tok, vectors, cfg)


def augmentation_mode(mlm: str | None, glove: str | None) -> str:
    if mlm and glove:
        return "mlm+glove"
    return "mlm only (multi-piece words kept)" if mlm else "glove only (no MLM: fallback)"


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class AugmentResult:
    examples: Examples
    source_index: list[int]
    seconds: float

    @property
    def sentences_per_s(self) -> float:
        return len(set(self.source_index)) / max(self.seconds, 1e-9)


def augment_examples(
    examples: Examples, augmenter: Augmenter, chunk: int = 256, progress: Any = None
) -> AugmentResult:
    """Augment every example; returns unlabelled examples (labels ``None``) with the index of their source."""
    t0 = time.perf_counter()
    texts: list[tuple[str, ...]] = []
    src: list[int] = []
    bar = progress.add_task("augment", total=len(examples)) if progress is not None else None
    for start in range(0, len(examples), chunk):
        part = examples.texts[start : start + chunk]
        for i, rows in enumerate(augmenter.augment_texts(part, first_index=start)):
            texts += rows
            src += [start + i] * len(rows)
        if bar is not None:
            progress.advance(bar, len(part))
    return AugmentResult(Examples(texts, None, f"augment:{examples.source}"), src, time.perf_counter() - t0)


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def write_augmented(
    result: AugmentResult, task: TaskSpec, out: Path, provenance: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``out`` (``.tsv``: the task's GLUE text-column header plus ``source_index``, no label column;
    ``.jsonl``: the task's text fields) and ``<out>.provenance.json``. Readable as ``method.train_data``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    ex = result.examples
    if out.suffix == ".jsonl":
        with open(out, "w", encoding="utf-8") as f:
            for t, s in zip(ex.texts, result.source_index, strict=True):
                f.write(json.dumps({**dict(zip(task.text_fields, t, strict=True)), "source_index": s}) + "\n")
    else:
        layout = task.tsv
        if layout is None or not layout.header or not all(isinstance(c, str) for c in layout.text_columns):
            raise ConfigError(f"task {task.name!r} has no header-based TSV layout; write .jsonl instead")
        with open(out, "w", encoding="utf-8") as f:
            f.write("\t".join([*map(str, layout.text_columns), "source_index"]) + "\n")
            for t, s in zip(ex.texts, result.source_index, strict=True):
                f.write("\t".join([*(_clean(x) for x in t), str(s)]) + "\n")
    prov = Path(str(out) + ".provenance.json")
    prov.write_text(json.dumps(provenance, indent=1))
    return out, prov


def provenance_record(
    cfg: AugmentConfig, result: AugmentResult, n_source: int, **sources: Any
) -> dict[str, Any]:
    return {
        "method": "TinyBERT data augmentation (Jiao et al. 2020, Algorithm 1)",
        **sources,
        "parameters": asdict(cfg),
        "stop_words": "official TinyBERT StopWordsList, see bertdistill.data.augment.STOP_WORDS",
        "source_examples": n_source,
        "augmented_examples": len(result.examples),
        "expansion": round(len(result.examples) / max(1, n_source), 3),
        "seconds": round(result.seconds, 3),
        "source_sentences_per_s": round(result.sentences_per_s, 3),
        "labels": "none: the teacher labels the augmented set (never copied from the source)",
    }


__all__ = [
    "DEFAULT_TRIES",
    "STOP_WORDS",
    "AugmentConfig",
    "AugmentResult",
    "Augmenter",
    "GloVeNeighbours",
    "augment_examples",
    "augmentation_mode",
    "is_candidate_word",
    "load_augmenter",
    "provenance_record",
    "write_augmented",
]
