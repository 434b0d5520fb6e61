"""Parallel text for sequence-to-sequence students (the ``translation`` task): reading pairs, encoding them for
a seq2seq student and for a conditional-MLM teacher, batching them, detokenising WordPiece output, and BLEU.

Pairs come from (``data.path``, ``data.format``; ``data.text_fields`` = the source and target languages):

* a ``source<TAB>target`` TSV file, or ``<split>.tsv`` in a dir (no header; exactly two columns);
* a pair of line-aligned files in a dir: ``<split>.<src>`` / ``<split>.<tgt>`` (Multi30k: ``train.de`` /
  ``train.en``) or OpenNMT's ``src-<split>.txt`` / ``tgt-<split>.txt``;
* an HF translation dataset (``data.format: hf``): ``data.path`` = a hub name, ``name:config`` (``wmt16:de-en``)
  or a dir written by ``save_to_disk``; rows ``{"translation": {src: …, tgt: …}}`` or columns named ``src`` /
  ``tgt``.

The split ``dev`` also finds ``val`` / ``valid`` / ``validation`` files. Pairs with an empty side are skipped.

Encoding (:func:`encode_pairs`), with the teacher's tokenizer (BERT-style ``[CLS]`` / ``[SEP]``) and at most
``max_length`` tokens per side: the student's encoder reads ``[CLS] source [SEP]``; its decoder predicts
``target [SEP]`` (``[SEP]`` is the end of sequence) after a start token; the teacher's view of the same example
is ``[CLS] source [SEP] target [SEP]`` with segment ids 0 / 1 — so the target positions of the teacher's input
and the decoder's prediction positions are the same tokens, one to one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import ConfigError, DataConfig
from .loading import Collator, Examples, TokenizedDataset
from .rows import text_lines

log = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "dev": ("dev", "val", "valid", "validation"),
    "val": ("val", "dev", "valid", "validation"),
    "valid": ("valid", "val", "dev", "validation"),
    "validation": ("validation", "val", "valid", "dev"),
}


# ----------------------------------------------------------------------------------------------- reading


def _names(split: str) -> tuple[str, ...]:
    return SPLIT_ALIASES.get(split, (split,))


def _langs(cfg: DataConfig) -> tuple[str, str] | None:
    if not cfg.text_fields:
        return None
    if len(cfg.text_fields) != 2:
        raise ConfigError(
            f"data.text_fields of a translation task names the source and target language, got {cfg.text_fields}"
        )
    return cfg.text_fields[0], cfg.text_fields[1]


def read_lines(path: Path) -> list[str]:
    """The file's lines without line endings (UTF-8; a bad byte is an error naming its line)."""
    return [line.rstrip("\r\n") for line in text_lines(path)]


def _pairs(sources: Sequence[str], targets: Sequence[str], where: str) -> Examples:
    """Examples of stripped pairs; pairs with an empty side are dropped (a trailing empty line is common)."""
    texts: list[tuple[str, ...]] = [(s.strip(), t.strip()) for s, t in zip(sources, targets, strict=True)]
    kept = [p for p in texts if p[0] and p[1]]
    dropped = len(texts) - len(kept)
    if dropped > 1:
        log.warning("%s: dropped %d pair(s) with an empty side", where, dropped)
    if not kept:
        raise ConfigError(f"{where}: no sentence pairs")
    return Examples(kept, None, where)


def read_tsv_pairs(path: Path) -> Examples:
    """``source<TAB>target`` per line, no header."""
    sources, targets = [], []
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            raise ConfigError(f"{path}:{lineno}: expected source<TAB>target (2 columns), got {len(cols)}")
        sources.append(cols[0])
        targets.append(cols[1])
    return _pairs(sources, targets, str(path))


def read_file_pair(src: Path, tgt: Path) -> Examples:
    """Two line-aligned files."""
    a, b = read_lines(src), read_lines(tgt)
    if len(a) != len(b):
        raise ConfigError(
            f"{src} has {len(a)} lines, {tgt} {len(b)}: the files of a pair must be line-aligned"
        )
    return _pairs(a, b, f"{src}+{tgt.name}")


def find_split_files(root: Path, split: str, langs: tuple[str, str] | None) -> tuple[Path, ...]:
    """``(tsv,)`` or ``(src, tgt)`` of ``split`` in a dir."""
    tried: list[str] = []
    for name in _names(split):
        tsv = root / f"{name}.tsv"
        if tsv.is_file():
            return (tsv,)
        tried.append(tsv.name)
        layouts = [(f"src-{name}.txt", f"tgt-{name}.txt")]
        if langs:
            layouts.insert(0, (f"{name}.{langs[0]}", f"{name}.{langs[1]}"))
        for a, b in layouts:
            if (root / a).is_file() and (root / b).is_file():
                return root / a, root / b
            tried.append(f"{a} + {b}")
    hint = "" if langs else " (set data.text_fields: [SOURCE_LANG, TARGET_LANG] for <split>.<lang> files)"
    raise ConfigError(f"no {split} pairs in {root}: tried {', '.join(tried)}{hint}")


def read_hf_pairs(spec: str, split: str, langs: tuple[str, str] | None) -> Examples:
    """An HF translation dataset: a dir written by ``save_to_disk``, or a hub ``name`` / ``name:config``."""
    import datasets

    if langs is None:
        raise ConfigError("an HF translation dataset needs data.text_fields: [SOURCE_LANG, TARGET_LANG]")
    local = Path(spec).expanduser()
    ds: Any
    if local.is_dir():
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            name = next((n for n in _names(split) if n in loaded), None)
            if name is None:
                raise ConfigError(f"{local}: no split {split!r}; it has {list(loaded)}")
            ds = loaded[name]
        else:
            ds = loaded
    else:
        name, _, conf = spec.partition(":")
        hub_split = {"dev": "validation", "val": "validation", "valid": "validation"}.get(split, split)
        ds = datasets.load_dataset(name, conf or None, split=hub_split)  # pragma: no cover - network
    src, tgt = langs
    if "translation" in ds.column_names:
        rows = ds["translation"]
        return _pairs([r[src] for r in rows], [r[tgt] for r in rows], f"hf:{spec}:{split}")
    missing = [c for c in (src, tgt) if c not in ds.column_names]
    if missing:
        raise ConfigError(f"hf:{spec}: no 'translation' column and no column(s) {missing}: {ds.column_names}")
    return _pairs(ds[src], ds[tgt], f"hf:{spec}:{split}")


def load_parallel(cfg: DataConfig, split: str) -> Examples:
    """The (source, target) pairs of ``split`` from wherever ``cfg`` points (see the module docstring)."""
    if cfg.path is None:
        raise ConfigError(
            "the translation task reads pairs from data.path: a source<TAB>target TSV, a dir with <split>.<lang> "
            "or src-/tgt-<split>.txt files, or (data.format: hf) an HF translation dataset"
        )
    langs = _langs(cfg)
    if cfg.format == "hf":
        return read_hf_pairs(cfg.path, split, langs)
    if cfg.format not in ("auto", "glue_tsv"):
        raise ConfigError(f"data.format {cfg.format!r} does not apply to the translation task (auto or hf)")
    path = Path(cfg.path).expanduser()
    if path.is_file():
        return read_tsv_pairs(path)
    if not path.is_dir():
        raise ConfigError(f"data.path {str(path)!r} does not exist")
    files = find_split_files(path, split, langs)
    return read_tsv_pairs(files[0]) if len(files) == 1 else read_file_pair(files[0], files[1])


# ----------------------------------------------------------------------------------------------- encoding


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """``(cls, sep, pad)`` ids of a BERT-style tokenizer."""
    ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    if any(i is None for i in ids):
        raise ConfigError(
            f"{type(tokenizer).__name__} lacks a [CLS], [SEP] or [PAD] token: parallel data is encoded as "
            "[CLS] source [SEP] target [SEP] (a BERT-style vocabulary)"
        )
    return int(ids[0]), int(ids[1]), int(ids[2])


@dataclass
class ParallelDataset(TokenizedDataset):
    """Encoded pairs: ``input_ids`` = ``[CLS] source [SEP]`` (the student's encoder), ``target_ids`` =
    ``target [SEP]`` (what the decoder predicts), and ``teacher`` = ``[CLS] source [SEP] target [SEP]`` with
    segment ids (the conditional-MLM teacher's view; the teacher cache is keyed by it). Without targets
    (source-only input to translate) ``target_ids`` are empty and there is no teacher view."""

    target_ids: list[list[int]] = field(default_factory=list)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        if self.target_ids:
            item["target_ids"] = self.target_ids[i]
        return item

    @property
    def lengths(self) -> list[int]:
        if not self.target_ids:
            return [len(x) for x in self.input_ids]
        return [len(s) + len(t) for s, t in zip(self.input_ids, self.target_ids, strict=True)]

    def fingerprint(self) -> str:
        h = hashlib.sha256(super().fingerprint().encode())
        for ids in self.target_ids:
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()[:20]

    def references(self) -> list[str]:
        """The raw target sentences (what BLEU compares against)."""
        return [t[1] if len(t) > 1 else "" for t in self.texts]


def encode_pairs(examples: Examples, tokenizer: Any, max_length: int) -> ParallelDataset:
    """Encode pairs (or bare sources) for a seq2seq student and a conditional-MLM teacher. Each side keeps at
    most ``max_length`` tokens with its special tokens (source: ``max_length − 2`` pieces, target:
    ``max_length − 1``), cut identically in the student's and the teacher's view."""
    cls_id, sep_id, _ = special_ids(tokenizer)
    sources = [t[0] for t in examples.texts]
    has_targets = bool(examples.texts) and all(len(t) > 1 for t in examples.texts)
    src_pieces = tokenizer(sources, add_special_tokens=False, verbose=False)["input_ids"] if sources else []
    inputs = [[cls_id, *s[: max(1, max_length - 2)], sep_id] for s in src_pieces]
    if not has_targets:
        return ParallelDataset(inputs, None, None, list(examples.texts))
    tgt_pieces = tokenizer([t[1] for t in examples.texts], add_special_tokens=False, verbose=False)[
        "input_ids"
    ]
    targets = [[*t[: max(1, max_length - 1)], sep_id] for t in tgt_pieces]
    pair_ids = [[*s, *t] for s, t in zip(inputs, targets, strict=True)]
    segments = [[0] * len(s) + [1] * len(t) for s, t in zip(inputs, targets, strict=True)]
    teacher = TokenizedDataset(pair_ids, segments, None, list(examples.texts))
    return ParallelDataset(inputs, None, None, list(examples.texts), teacher, target_ids=targets)


class ParallelCollator:
    """Pads a batch of :class:`ParallelDataset` items: ``inputs`` (the source: ``input_ids``, ``attention_mask``);
    with targets, ``decoder_input_ids`` (``start`` + target shifted right), ``decoder_attention_mask`` and
    ``labels`` (the target ids, −100 on padding); with the teacher's view, ``teacher_inputs`` (``input_ids``,
    ``attention_mask``, ``token_type_ids``)."""

    def __init__(self, pad_token_id: int, decoder_start_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.decoder_start_token_id = decoder_start_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "idx": torch.tensor([it["idx"] for it in items]),
            "inputs": Collator.pad(items, "", self.pad_token_id),
        }
        if items[0].get("target_ids"):
            batch.update(self.targets([it["target_ids"] for it in items]))
        if "teacher_input_ids" in items[0]:
            batch["teacher_inputs"] = Collator.pad(items, "teacher_", self.pad_token_id)
        return batch

    def targets(self, targets: list[list[int]]) -> dict[str, Tensor]:
        n, width = len(targets), max(len(t) for t in targets)
        dec = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        for r, t in enumerate(targets):
            k = len(t)
            dec[r, :k] = torch.tensor([self.decoder_start_token_id, *t[:-1]], dtype=torch.long)
            mask[r, :k] = 1
            labels[r, :k] = torch.tensor(t, dtype=torch.long)
        return {"decoder_input_ids": dec, "decoder_attention_mask": mask, "labels": labels}


# ----------------------------------------------------------------------------------------------- output text

_NO_SPACE_BEFORE = re.compile(r" ([.,!?;:%)\]}])")
_NO_SPACE_AFTER = re.compile(r"([(\[{$]) ")
_CONTRACTION = re.compile(r"(\w) ' (s|t|re|ve|ll|d|m)\b")
_TRAILING_APOSTROPHE = re.compile(r"(\w) '(?= |$)")
_JOINER = re.compile(r"(\w) ([-/]) (?=\w)")
_DIGIT_GROUP = re.compile(r"(\d)([.,]) (?=\d)")


def merge_wordpieces(pieces: Sequence[str]) -> list[str]:
    """WordPiece tokens to words (``##`` continuations joined to the piece before)."""
    words: list[str] = []
    for p in pieces:
        if p.startswith("##") and words:
            words[-1] += p[2:]
        else:
            words.append(p)
    return words


def detokenize(words: Sequence[str]) -> str:
    """Words from a WordPiece tokenizer (which splits off every punctuation mark) back to running text:
    no space before ``. , ! ? ; : % ) ] }`` or after ``( [ {``, contractions (``man ' s`` → ``man's``,
    ``isn ' t`` → ``isn't``), word-internal hyphens and slashes (``t - shirt`` → ``t-shirt``), digit groups
    (``1 , 000``), and double quotes attached to what they enclose."""
    out: list[str] = []
    open_quote = attach = False
    for w in words:
        if w == '"':
            if open_quote and out:
                out[-1] += '"'
            else:
                out.append('"')
                attach = True
            open_quote = not open_quote
            continue
        if attach:
            out[-1] += w
            attach = False
        else:
            out.append(w)
    text = " ".join(out)
    text = _CONTRACTION.sub(r"\1'\2", text)
    text = _TRAILING_APOSTROPHE.sub(r"\1'", text)
    text = _NO_SPACE_BEFORE.sub(r"\1", text)
    text = _NO_SPACE_AFTER.sub(r"\1", text)
    text = _JOINER.sub(r"\1\2", text)
    text = _DIGIT_GROUP.sub(r"\1\2", text)
    return text.strip()


def decode_ids(tokenizer: Any, ids: Sequence[int]) -> str:
    """Generated ids → detokenised text: stops at the first ``[SEP]``, drops special tokens."""
    _, sep_id, _ = special_ids(tokenizer)
    special = set(tokenizer.all_special_ids)
    kept: list[int] = []
    for i in ids:
        if i == sep_id:
            break
        if i not in special:
            kept.append(int(i))
    return detokenize(merge_wordpieces(tokenizer.convert_ids_to_tokens(kept)))


# ----------------------------------------------------------------------------------------------- scoring


def translation_metrics(
    hypotheses: Sequence[str], references: Sequence[str], lowercase: bool
) -> dict[str, float]:
    """Corpus BLEU and chrF (sacreBLEU; BLEU with its default 13a tokenisation) of detokenised hypotheses
    against the raw references; ``lowercase`` (both metrics) for an uncased vocabulary, whose output has no
    case. Also BLEU's ``length_ratio`` (hypothesis / reference tokens) and ``brevity_penalty``: a student
    that stops too early loses BLEU through them, which the score alone does not show."""
    try:
        import sacrebleu  # noqa: F401
    except ImportError as e:  # pragma: no cover - the cmlm extra is installed in tests
        raise ConfigError("BLEU needs sacrebleu: pip install 'bertdistill[cmlm]'") from e
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    from sacrebleu.metrics import BLEU, CHRF

    bleu = BLEU(lowercase=lowercase).corpus_score(list(hypotheses), [list(references)])
    chrf = CHRF(lowercase=lowercase).corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": float(bleu.score),
        "chrf": float(chrf.score),
        "length_ratio": float(bleu.sys_len / bleu.ref_len) if bleu.ref_len else 0.0,
        "brevity_penalty": float(bleu.bp),
    }


def bleu_signature(lowercase: bool) -> str:
    """sacreBLEU's signature of :func:`translation_metrics`' BLEU (for result files)."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(lowercase=lowercase)
    bleu.corpus_score(["a"], [["a"]])  # the signature needs the number of references
    return str(bleu.get_signature())


__all__ = [
    "ParallelCollator",
    "ParallelDataset",
    "bleu_signature",
    "decode_ids",
    "detokenize",
    "encode_pairs",
    "find_split_files",
    "load_parallel",
    "merge_wordpieces",
    "read_file_pair",
    "read_hf_pairs",
    "read_tsv_pairs",
    "special_ids",
    "translation_metrics",
]
