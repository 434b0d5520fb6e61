"""Loading task data (GLUE TSV dirs, the HF hub, CSV/JSONL), tokenising it once, and batching it.

Batches are dicts: ``idx`` (row numbers, for the teacher cache), ``labels`` (absent when unlabelled),
``inputs`` (the student's model inputs) and, only when the teacher tokenizes differently from the student,
``teacher_inputs`` — read it with :func:`teacher_inputs`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ..config import ConfigError, DataConfig
from .local import how_to_point, local_task_dir
from .rows import RowPolicy, text_lines
from .tasks import HF_LABEL_NAMES, TaskSpec, custom_task, get_task

log = logging.getLogger(__name__)


@dataclass
class Examples:
    """Raw examples of one split: ``texts[i]`` is a 1- or 2-tuple of strings; ``labels[i]`` the target."""

    texts: list[tuple[str, ...]]
    labels: list[int | float] | None
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Examples:
        return Examples(
            [self.texts[i] for i in indices],
            None if self.labels is None else [self.labels[i] for i in indices],
            self.source,
        )


def resolve_task(cfg: DataConfig) -> TaskSpec:
    """The task ``cfg`` names; an unknown name or an incomplete custom task is a ConfigError."""
    try:
        if cfg.task == "custom":
            if not cfg.text_fields:
                raise ConfigError("data.task: custom needs data.text_fields (one or two column names)")
            return custom_task(
                "custom", cfg.text_fields, cfg.label_field, cfg.labels, cfg.regression, cfg.metrics
            )
        if cfg.metrics:
            raise ConfigError(
                f"data.metrics applies to custom tasks; {cfg.task!r} is scored by its official metrics "
                "(for other ones, use data.task: custom with its files and fields)"
            )
        return get_task(cfg.task)
    except ConfigError:
        raise
    except KeyError as e:
        raise ConfigError(f"data.task: {e.args[0]}") from None
    except ValueError as e:
        raise ConfigError(f"data: {e}") from None


# ----------------------------------------------------------------------------------------------- readers

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def read_tsv(path: Path, task: TaskSpec, labelled: bool = True, bad_rows: str = "error") -> Examples:
    """Read a GLUE-style TSV: header row (unless the task's layout is headerless), no quoting, BOM tolerated.
    A row with too few fields or a label outside the task's set is an error naming its line, or skipped and
    counted with ``bad_rows="skip"`` (QQP's train file has a few short rows)."""
    layout = task.tsv
    if layout is None:
        raise ConfigError(f"task {task.name!r} has no TSV layout")
    texts: list[tuple[str, ...]] = []
    labels: list[int | float] = []
    policy = RowPolicy(path, bad_rows)
    reader = csv.reader(text_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE)
    if layout.header:
        header = next(reader, None)
        if header is None:
            raise ConfigError(f"{path} is empty")
        header = [h.strip() for h in header]
        cols = [_col(header, c, path) for c in layout.text_columns]
        lab = None
        if labelled and layout.label_column is not None and layout.label_column in header:
            lab = _col(header, layout.label_column, path)
    else:
        cols = [int(c) for c in layout.text_columns]
        lab = int(layout.label_column) if (labelled and layout.label_column is not None) else None
    need = max([*cols, lab if lab is not None else -1]) + 1
    for row in reader:
        if len(row) < need:
            policy.bad(reader.line_num, f"{len(row)} tab-separated field(s), expected at least {need}")
            continue
        if lab is not None:
            try:
                label = task.label_index(row[lab])
            except ValueError as e:
                policy.bad(reader.line_num, str(e))
                continue
            labels.append(label)
        texts.append(tuple(row[c].strip() for c in cols))
    policy.done()
    if not texts:
        raise ConfigError(f"{path}: no examples read; is it a {task.name} TSV file?")
    return Examples(texts, labels if lab is not None else None, str(path))


def _col(header: list[str], name: str | int, path: Path) -> int:
    if isinstance(name, int):
        return name
    if name not in header:
        raise ConfigError(f"{path}: column {name!r} not found; the header has {header}")
    return header.index(name)


def _table_rows(path: Path, fmt: str, policy: RowPolicy) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row)`` of a CSV file (with header) or a JSONL file (one object per line)."""
    if fmt == "jsonl":
        for lineno, line in enumerate(text_lines(path), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                policy.bad(lineno, f"not valid JSON ({e.msg}, column {e.colno})")
                continue
            if not isinstance(obj, dict):
                policy.bad(lineno, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield lineno, obj
        return
    reader = csv.reader(text_lines(path))
    header = next(reader, None)
    if header is None:
        raise ConfigError(f"{path} is empty; expected a header row naming the columns")
    for row in reader:
        if len(row) != len(header):
            if row:  # a blank line is no row
                policy.bad(reader.line_num, f"{len(row)} field(s), the header has {len(header)} {header}")
            continue
        yield reader.line_num, dict(zip(header, row, strict=True))


def read_table(
    path: Path,
    task: TaskSpec,
    fmt: str,
    text_fields: Sequence[str],
    label_field: str,
    bad_rows: str = "error",
) -> Examples:
    """CSV (with header) or JSONL (one object per line) with the given column names. Whether the file is
    labelled is decided by its first row; a later row without a text field or the label, or with a label
    outside the task's set, is an error naming its line (or skipped and counted with ``bad_rows="skip"``)."""
    policy = RowPolicy(path, bad_rows)
    texts: list[tuple[str, ...]] = []
    labels: list[int | float] = []
    labelled: bool | None = None
    for lineno, row in _table_rows(path, fmt, policy):
        if labelled is None:
            missing = [c for c in text_fields if c not in row]
            if missing:
                raise ConfigError(f"{path}: column(s) {missing} not found; columns are {list(row)}")
            labelled = label_field in row
        absent = [c for c in (*text_fields, *([label_field] if labelled else [])) if row.get(c) is None]
        if absent:
            policy.bad(lineno, f"no value for {absent}")
            continue
        if labelled:
            try:
                labels.append(task.label_index(str(row[label_field])))
            except ValueError as e:
                policy.bad(lineno, str(e))
                continue
        texts.append(tuple(str(row[c]) for c in text_fields))
    policy.done()
    if not texts:
        raise ConfigError(f"{path}: no rows")
    return Examples(texts, labels if labelled else None, str(path))


def read_hf(task: TaskSpec, split: str) -> Examples:
    """``split`` of the task's hub dataset; an unreachable hub (offline, ``HF_HUB_OFFLINE``, no cached copy) is
    one line saying how to read local files instead."""
    import datasets

    if not task.hf_path:
        raise ConfigError(f"task {task.name!r} has no hub dataset; set data.path")
    hub_split = task.hf_splits.get(split, split)
    try:
        ds = datasets.load_dataset(*task.hf_path, split=hub_split)
    except (ConnectionError, TimeoutError) as e:  # datasets reports every offline case as ConnectionError
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"cannot read {task.name} from the HF hub ({'/'.join(task.hf_path)}: {why}); for local GLUE files "
            f"{how_to_point(task.name)}"
        ) from None
    texts = list(zip(*[ds[c] for c in task.hf_text_columns], strict=True))
    raw = ds[task.hf_label_column] if task.hf_label_column in ds.column_names else None
    labels: list[int | float] | None = None
    if raw is not None and not all(r == -1 for r in raw[:50]):  # GLUE test splits carry -1
        if task.regression:
            labels = [float(r) for r in raw]
        elif task.name in HF_LABEL_NAMES:
            names = HF_LABEL_NAMES[task.name]
            labels = [task.labels.index(names[int(r)]) for r in raw]
        else:
            labels = [int(r) for r in raw]
    return Examples([tuple(t) for t in texts], labels, f"hf:{'/'.join(task.hf_path)}:{hub_split}")


def load_examples(cfg: DataConfig, task: TaskSpec, split: str) -> Examples:
    """Examples of ``split`` (train / dev / test / dev_mismatched ...) from wherever ``cfg`` points; for the
    ``translation`` task, (source, target) pairs (:func:`bertdistill.data.parallel.load_parallel`)."""
    if task.name == "translation":
        from .parallel import load_parallel

        return load_parallel(cfg, split)
    fmt = cfg.format
    local = local_task_dir(task.name) if cfg.path is None and fmt != "hf" else None
    if cfg.path is None and local is None:
        if fmt not in ("auto", "hf"):
            raise ConfigError(f"data.format {fmt!r} needs data.path")
        return read_hf(task, split)
    path = local or Path(str(cfg.path)).expanduser()
    if not path.exists():
        raise ConfigError(f"data.path {str(path)!r} does not exist")
    if path.is_dir():
        if fmt in ("auto", "glue_tsv"):
            name = task.tsv_files.get(split, f"{split}.tsv")
            file = path / name
            if file.is_file():
                return read_tsv(file, task, labelled=split != "test", bad_rows=cfg.bad_rows)
            if fmt == "glue_tsv":
                raise ConfigError(f"{file} not found (task {task.name}, split {split})")
        for ext, f in (("jsonl", "jsonl"), ("csv", "csv")):
            file = path / f"{split}.{ext}"
            if file.is_file() and fmt in ("auto", f):
                return read_table(
                    file, task, f, cfg.text_fields or task.text_fields, cfg.label_field, cfg.bad_rows
                )
        raise ConfigError(
            f"no {split} file in {path}: expected {task.tsv_files.get(split, split + '.tsv')}, "
            f"{split}.jsonl or {split}.csv"
        )
    f = (
        fmt
        if fmt != "auto"
        else ("jsonl" if path.suffix == ".jsonl" else "glue_tsv" if path.suffix == ".tsv" else "csv")
    )
    if f == "glue_tsv":
        return read_tsv(path, task, bad_rows=cfg.bad_rows)
    return read_table(path, task, f, cfg.text_fields or task.text_fields, cfg.label_field, cfg.bad_rows)


# ----------------------------------------------------------------------------------------------- selection slice

SELECTION_SEED = 0
"""The selection slice does not depend on ``train.seed``: every run on the same training data — each point and
seed of a sweep — is scored on the same examples, so their scores compare."""


def _norm(text: tuple[str, ...]) -> tuple[str, ...]:
    """Whitespace-normalised text: how an augmented file writes an example's original row."""
    return tuple(" ".join(t.split()) for t in text)


def selection_split(ex: Examples, fraction: float) -> tuple[list[int], list[int]]:
    """``(kept, held)`` row indices of the training examples: ``held`` is about ``fraction`` of them, drawn with
    :data:`SELECTION_SEED`. All copies of a text fall on the same side, so no held-out sentence is ever trained
    on, not even as a duplicate row."""
    by_text: dict[tuple[str, ...], list[int]] = {}
    for i, t in enumerate(ex.texts):
        by_text.setdefault(_norm(t), []).append(i)
    groups = list(by_text.values())
    random.Random(SELECTION_SEED).shuffle(groups)
    want = max(1, round(fraction * len(ex)))
    held: list[int] = []
    for g in groups:
        if len(held) >= want:
            break
        held += g
    if len(held) >= len(ex):
        raise ConfigError(
            f"data.selection_fraction {fraction} leaves no training examples of the {len(ex)} in {ex.source}; "
            "lower it"
        )
    held_set = set(held)
    return [i for i in range(len(ex)) if i not in held_set], sorted(held)


def run_train_examples(cfg: DataConfig, task: TaskSpec) -> Examples:
    """The examples a run trains on: the train split, minus the selection slice when
    ``data.selection_fraction`` is set (before any ``max_train_examples`` subsampling)."""
    ex = load_examples(cfg, task, cfg.train_split)
    if cfg.selection_fraction is None:
        return ex
    return ex.subset(selection_split(ex, cfg.selection_fraction)[0])


def run_eval_examples(cfg: DataConfig, task: TaskSpec) -> Examples | None:
    """The examples a run evaluates on (model selection, ``metrics.json``): the selection slice of the train
    split when ``data.selection_fraction`` is set — dev is then never read — else ``eval_split`` (``None`` when
    it is empty)."""
    if cfg.selection_fraction is not None:
        ex = load_examples(cfg, task, cfg.train_split)
        return ex.subset(selection_split(ex, cfg.selection_fraction)[1])
    return load_examples(cfg, task, cfg.eval_split) if cfg.eval_split else None


def _source_index(path: str) -> list[int] | None:
    """The ``source_index`` column of an augmented file (``bertdistill augment`` writes one), if it has one."""
    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix == ".jsonl":
        rows = [json.loads(x) for x in text_lines(p) if x.strip()]
        return [int(r["source_index"]) for r in rows] if rows and "source_index" in rows[0] else None
    delim = "\t" if p.suffix == ".tsv" else ","
    reader = csv.reader(
        text_lines(p), delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL
    )
    header = [h.strip() for h in next(reader, [])]
    if "source_index" not in header:
        return None
    col = header.index("source_index")
    return [int(r[col]) for r in reader if len(r) > col]


def without_selection(extra: Examples, cfg: DataConfig, task: TaskSpec) -> Examples:
    """Rows of a file derived from the train split (an augmented set: each source example's original row, then
    its variants) minus every row derived from a selection example — so no variant of a held-out sentence is
    trained on. Rows are grouped by the file's ``source_index`` column, else each group starts at a row that
    is a training example; a group is dropped when its first row is in the selection slice."""
    if cfg.selection_fraction is None or not len(extra):
        return extra
    train = load_examples(cfg, task, cfg.train_split)
    held_idx = set(selection_split(train, cfg.selection_fraction)[1])
    held = {_norm(t) for i, t in enumerate(train.texts) if i in held_idx}
    known = {_norm(t) for t in train.texts}
    sources = _source_index(extra.source)
    if sources is not None and len(sources) != len(extra):
        sources = None
    keep: list[int] = []
    drop, last = False, None
    for i, t in enumerate(extra.texts):
        text = _norm(t)
        starts = sources[i] != last if sources is not None else text in known
        if starts:
            drop, last = text in held, sources[i] if sources is not None else None
        elif i == 0:
            raise ConfigError(
                f"{extra.source}: its first row is not a training example, so the rows derived from the "
                "selection slice cannot be told apart; write it with `bertdistill augment` (originals first, "
                "with source_index), or unset data.selection_fraction"
            )
        if not drop:
            keep.append(i)
    return extra.subset(keep)


def evaluation_texts(cfg: DataConfig, task: TaskSpec) -> set[tuple[str, ...]]:
    """The (whitespace-normalised) texts of the evaluation splits ``cfg`` can read: ``eval_split`` and, for data in
    a local directory, every other split the task names (``dev``, ``test``; MNLI's matched and mismatched ones)
    where their files are there. A single-file dataset has no other split
    to read; data from the hub gives ``eval_split`` only (a run reads it anyway; ``test`` is not downloaded)."""
    local = cfg.path is None and local_task_dir(task.name) is not None
    if cfg.path is not None:
        local = Path(str(cfg.path)).expanduser().is_dir()
        if not local:
            return set()
    others = [s for s in task.tsv_files if s != cfg.train_split] or [
        "dev",
        "test",
    ]  # MNLI: dev_mismatched, ...
    splits = [cfg.eval_split, *(others if local else [])]
    out: set[tuple[str, ...]] = set()
    for split in dict.fromkeys(s for s in splits if s and s != cfg.train_split):
        try:
            ex = load_examples(cfg, task, split)
        except (ConfigError, OSError):  # no such split here
            continue
        out |= {_norm(t) for t in ex.texts}
    return out


def extra_training_rows(path: str, cfg: DataConfig, task: TaskSpec, what: str) -> Examples:
    """The rows of a file a method trains on besides the train split (augmented text: ``method.augmented_data``,
    ``method.train_data``), read as ``cfg``'s task and never evaluation text: refused when its provenance file
    (``<path>.provenance.json``, written by ``bertdistill augment``) names an evaluation split; rows derived from
    the selection slice dropped (:func:`without_selection`); rows whose text is an evaluation example
    (:func:`evaluation_texts`) dropped with a warning — a variant that happens to equal a dev sentence would
    otherwise be trained on, teacher-labelled."""
    prov = Path(str(path) + ".provenance.json")
    if prov.is_file():
        try:
            split = json.loads(prov.read_text()).get("split")
        except (ValueError, AttributeError):
            split = None
        if isinstance(split, str) and (
            split.startswith(("dev", "test", "validation")) or split == cfg.eval_split
        ):
            raise ConfigError(
                f"{what} {path}: its provenance file {prov} says it was made from the {split!r} split; train on "
                "text derived from the training split only (`bertdistill augment` reads it)"
            )
    extra = load_examples(replace(cfg, path=path, format="auto"), task, cfg.train_split)
    extra = without_selection(extra, cfg, task)
    held = evaluation_texts(cfg, task)
    keep = [i for i, t in enumerate(extra.texts) if _norm(t) not in held]
    if len(keep) < len(extra):
        log.warning(
            "%s %s: dropped %d of its %d rows whose text is an evaluation example (dev/test text never trains)",
            what,
            path,
            len(extra) - len(keep),
            len(extra),
        )
    return extra.subset(keep) if len(keep) < len(extra) else extra


def subsample(ex: Examples, n: int | None, seed: int) -> Examples:
    if n is None or n >= len(ex):
        return ex
    idx = sorted(random.Random(seed).sample(range(len(ex)), n))
    return ex.subset(idx)


# ----------------------------------------------------------------------------------------------- tokenised


@dataclass
class TokenizedDataset(Dataset):
    """Token ids per example (unpadded) plus labels; ``__getitem__`` returns a dict with its ``idx``.

    ``teacher``: the same examples in the *teacher's* tokenisation, for a student whose tokenizer differs
    (a word-level BiLSTM, a student with another vocabulary). Items then also carry ``teacher_input_ids``
    (and ``teacher_token_type_ids``), the collator builds ``batch["teacher_inputs"]`` from them, and the
    teacher cache is keyed by — and built from — the teacher's tokens (:func:`teacher_view`)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int | float] | None
    texts: list[tuple[str, ...]] = field(default_factory=list)
    teacher: TokenizedDataset | None = None
    truncated: int | None = None
    """Examples cut at ``max_length`` when tokenised (known with a fast tokenizer; None otherwise)."""

    def __post_init__(self) -> None:
        if self.teacher is not None and len(self.teacher) != len(self.input_ids):
            raise ValueError(
                f"the teacher's view has {len(self.teacher)} examples, the student's {len(self.input_ids)}"
            )

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"idx": i, "input_ids": self.input_ids[i]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[i]
        if self.labels is not None:
            item["labels"] = self.labels[i]
        if self.teacher is not None:
            item["teacher_input_ids"] = self.teacher.input_ids[i]
            if self.teacher.token_type_ids is not None:
                item["teacher_token_type_ids"] = self.teacher.token_type_ids[i]
        return item

    @cached_property
    def lengths(self) -> list[int]:
        """The token count of every example, computed once (the token lists are not changed after construction;
        ``data.lengths[i]`` in a loop over the examples was quadratic: minutes of a full SST-2 cache build)."""
        return [len(x) for x in self.input_ids]

    def fingerprint(self) -> str:
        """Content hash of the token ids (and segment ids): changes whenever data or tokenisation does."""
        h = hashlib.sha256()
        for i, ids in enumerate(self.input_ids):
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
            if self.token_type_ids is not None:
                h.update(np.asarray(self.token_type_ids[i], dtype=np.int8).tobytes())
            h.update(b"|")
        return h.hexdigest()[:20]


def teacher_view(data: Dataset) -> Dataset:
    """The dataset as the teacher tokenises it: its ``teacher`` view when the student tokenises differently,
    else the dataset itself (what the teacher cache is built from and keyed by)."""
    view = getattr(data, "teacher", None)
    return view if view is not None else data


class GroupedDataset(Dataset):
    """Several named datasets in one (e.g. the tasks of a multi-task run). Index ``i`` runs over the groups
    in order; an item carries ``group`` (its dataset's name) and ``idx`` = its row *within* that group (the
    key of the group's teacher cache). A sampler must not mix groups in one batch
    (:class:`GroupBatchSampler`)."""

    def __init__(self, parts: Mapping[str, Dataset]) -> None:
        if not parts:
            raise ValueError("a grouped dataset needs at least one group")
        self.parts = dict(parts)
        self.names = list(self.parts)
        sizes = [len(p) for p in self.parts.values()]  # type: ignore[arg-type]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, i: int) -> tuple[str, int]:
        g = int(np.searchsorted(self.starts, i, side="right") - 1)
        return self.names[g], i - int(self.starts[g])

    def __getitem__(self, i: int) -> dict[str, Any]:
        name, j = self.locate(i)
        item = dict(self.parts[name][j])
        item["idx"], item["group"] = j, name
        return item

    def group_indices(self, name: str) -> range:
        g = self.names.index(name)
        return range(int(self.starts[g]), int(self.starts[g + 1]))

    @property
    def lengths(self) -> list[int]:
        out: list[int] = []
        for p in self.parts.values():
            out += list(getattr(p, "lengths", [1] * len(p)))  # type: ignore[arg-type]
        return out


def tokenize(examples: Examples, tokenizer: Any, max_length: int) -> TokenizedDataset:
    cols: list[Any] = list(zip(*examples.texts, strict=True)) if examples.texts else [[]]
    enc = tokenizer(*[list(c) for c in cols], truncation=True, max_length=max_length)
    tt = enc.get("token_type_ids")
    encodings = getattr(enc, "encodings", None)  # a fast tokenizer keeps what truncation cut off
    cut = sum(1 for e in encodings if e.overflowing) if encodings is not None else None
    return TokenizedDataset(enc["input_ids"], tt, examples.labels, examples.texts, truncated=cut)


TRUNCATION_WARNING = 0.1
"""Above this share of training examples cut at ``data.max_length``, the run warns."""


def truncation_warning(data: Any, max_length: int) -> str | None:
    """A warning when more than :data:`TRUNCATION_WARNING` of ``data``'s examples were cut at ``max_length``."""
    cut = getattr(data, "truncated", None)  # None: no training set, or not a tokenised one
    if not cut or cut / len(data) <= TRUNCATION_WARNING:
        return None
    n = len(data)
    return (
        f"{100 * cut / n:.0f}% of the {n} training examples ({cut}) are longer than data.max_length {max_length} "
        "tokens and are cut: the models see only their start; raise data.max_length (up to the teacher's "
        "positions) if the rest matters"
    )


# ----------------------------------------------------------------------------------------------- batching


def teacher_inputs(batch: Mapping[str, Any]) -> Mapping[str, Tensor]:
    """The teacher's model inputs of a batch (the student's unless the batch carries its own)."""
    return batch.get("teacher_inputs", batch["inputs"])


class Collator:
    """Dynamic padding to the longest example of the batch. Items with ``teacher_input_ids`` (a student that
    tokenises differently from its teacher) also give ``batch["teacher_inputs"]``, padded with
    ``teacher_pad_id``; items with ``group`` (a grouped dataset) give ``batch["group"]``."""

    def __init__(
        self, pad_token_id: int, regression: bool = False, teacher_pad_id: int | None = None
    ) -> None:
        self.pad_token_id = pad_token_id
        self.regression = regression
        self.teacher_pad_id = pad_token_id if teacher_pad_id is None else teacher_pad_id

    @staticmethod
    def pad(items: list[dict[str, Any]], prefix: str, pad_id: int) -> dict[str, Tensor]:
        ids_key, tt_key = f"{prefix}input_ids", f"{prefix}token_type_ids"
        n = len(items)
        width = max(len(it[ids_key]) for it in items)
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        has_tt = tt_key in items[0]
        tt = torch.zeros((n, width), dtype=torch.long) if has_tt else None
        for r, it in enumerate(items):
            k = len(it[ids_key])
            ids[r, :k] = torch.tensor(it[ids_key], dtype=torch.long)
            mask[r, :k] = 1
            if tt is not None:
                tt[r, :k] = torch.tensor(it[tt_key], dtype=torch.long)
        inputs: dict[str, Tensor] = {"input_ids": ids, "attention_mask": mask}
        if tt is not None:
            inputs["token_type_ids"] = tt
        return inputs

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "idx": torch.tensor([it["idx"] for it in items]),
            "inputs": self.pad(items, "", self.pad_token_id),
        }
        if "teacher_input_ids" in items[0]:
            batch["teacher_inputs"] = self.pad(items, "teacher_", self.teacher_pad_id)
        if "group" in items[0]:
            groups = {it["group"] for it in items}
            if len(groups) != 1:
                raise ValueError(f"a batch mixes dataset groups {sorted(groups)}; use a GroupBatchSampler")
            batch["group"] = items[0]["group"]
        if "labels" in items[0]:
            regression = self.regression or isinstance(items[0]["labels"], float)
            dtype = torch.float if regression else torch.long
            batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=dtype)
        return batch


class BatchSampler(Sampler[list[int]]):
    """Batches of indices, reshuffled per epoch from ``seed + epoch`` (so a resumed run sees the same order).

    With ``bucket=True`` the shuffled order is cut into chunks of ``batch_size × 50`` examples, each chunk
    sorted by length and cut into batches, and the batches shuffled: little padding, still random.
    With ``shuffle=False`` batches follow length order (evaluation: fastest, order restored by ``idx``).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        bucket: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.bucket = bucket
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        n = len(self.lengths)
        bs = self.batch_size
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: self.lengths[i]) if self.bucket else list(range(n))
            batches = [order[i : i + bs] for i in range(0, n, bs)]
        else:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
            if self.bucket:
                chunk = bs * 50
                batches = []
                for c in range(0, n, chunk):
                    part = sorted(order[c : c + chunk], key=lambda i: self.lengths[i])
                    batches += [part[i : i + bs] for i in range(0, len(part), bs)]
                perm = torch.randperm(len(batches), generator=g).tolist()
                batches = [batches[p] for p in perm]
            else:
                batches = [order[i : i + bs] for i in range(0, n, bs)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == bs]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        n = len(self.lengths)
        if self.drop_last and not (self.shuffle and self.bucket):
            return n // self.batch_size
        return len(self._batches()) if self.drop_last else -(-n // self.batch_size)


class GroupBatchSampler(Sampler[list[int]]):
    """Batches of a :class:`GroupedDataset` that never mix groups: each group is cut into (length-bucketed,
    shuffled) batches by its own :class:`BatchSampler`, then all batches are shuffled together — every
    epoch from ``seed + epoch``, so the group order of a resumed run is the uninterrupted run's (MT-DNN:
    "in each epoch, a mini-batch is selected among all tasks")."""

    def __init__(
        self, data: GroupedDataset, batch_size: int, shuffle: bool = True, bucket: bool = True, seed: int = 0
    ) -> None:
        self.data = data
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.samplers = []
        for k, name in enumerate(data.names):
            part = data.parts[name]
            lengths = list(getattr(part, "lengths", [1] * len(part)))  # type: ignore[arg-type]
            self.samplers.append(BatchSampler(lengths, batch_size, shuffle, bucket, seed + 7919 * (k + 1)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for s in self.samplers:
            s.set_epoch(epoch)

    def _batches(self) -> list[list[int]]:
        batches: list[list[int]] = []
        for k, sampler in enumerate(self.samplers):
            start = int(self.data.starts[k])
            batches += [[start + i for i in b] for b in sampler]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            batches = [batches[p] for p in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)
