"""Task specifications: text fields, label set, metrics, and where each GLUE task lives on disk / on the hub.

A :class:`TaskSpec` is pure data. ``get_task("sst2")`` returns the GLUE spec; ``custom_task(...)`` builds
one for a user's CSV/JSONL data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import did_you_mean

# ----------------------------------------------------------------------------------------------- metrics


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float((preds == labels).mean())


def f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class (GLUE's MRPC / QQP convention)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, average="binary", zero_division=0))


def macro_f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """F1 averaged over the classes, each weighing the same (for imbalanced or multi-class tasks)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, average="macro", zero_division=0))


def matthews(preds: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import pearsonr

    if np.std(preds) == 0 or np.std(labels) == 0:
        return 0.0
    return float(pearsonr(preds, labels)[0])


def spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.std(preds) == 0 or np.std(labels) == 0:
        return 0.0
    return float(spearmanr(preds, labels)[0])


REGRESSION_METRICS = {"pearson", "spearman"}

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
}


# ----------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class TsvLayout:
    """How a GLUE-style TSV file is laid out: columns by header name, or by index when headerless."""

    text_columns: tuple[str | int, ...]
    label_column: str | int | None
    header: bool = True


@dataclass(frozen=True)
class TaskSpec:
    name: str
    text_fields: tuple[str, ...]  # 1 (single sentence) or 2 (pair)
    labels: tuple[str, ...] = ()  # label names, in index order; empty for regression
    regression: bool = False
    metrics: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    # GLUE TSV files on disk
    tsv: TsvLayout | None = None
    tsv_files: dict[str, str] = field(default_factory=dict)  # split -> file name
    # HF hub
    hf_path: tuple[str, ...] = ()  # args of datasets.load_dataset
    hf_splits: dict[str, str] = field(default_factory=dict)  # our split -> hub split
    hf_text_columns: tuple[str, ...] = ()
    hf_label_column: str = "label"

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2

    def label_index(self, raw: str) -> int | float:
        """Map a raw label string from a file to the model's target (index, or float for regression)."""
        raw = raw.strip()
        if self.regression:
            try:
                return float(raw)
            except ValueError:
                raise ValueError(
                    f"task {self.name!r}: label {raw!r} is not a number (a regression target)"
                ) from None
        if raw in self.labels:
            return self.labels.index(raw)
        raise ValueError(
            f"task {self.name!r}: label {raw!r} is not one of {list(self.labels)}; "
            "check the label column of your data (or the task's `labels`)"
        )

    def compute_metrics(self, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """``preds`` are class indices (classification) or scores (regression)."""
        return {m: METRICS[m](preds, labels) for m in self.metrics}


def metrics_from_logits(task: TaskSpec, logits: Any, labels: Any) -> dict[str, float]:
    """Task metrics from model outputs (tensors or arrays): argmax for classification, the single output
    for regression."""
    lg = np.asarray(logits.float().cpu() if hasattr(logits, "float") else logits)
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    pred = lg.reshape(-1) if task.regression else np.argmax(lg, axis=-1)
    return {**task.compute_metrics(pred, y), **collapse_fields(task, pred, y)}


def collapse_fields(task: TaskSpec, pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """For classification: ``majority_baseline`` (the main metric of always predicting the most frequent gold
    class of these examples) and ``top_class_share`` (the share of predictions that fall on the model's most
    predicted class) — what :func:`collapse_warning` reads. Empty for regression or no examples."""
    if task.regression or len(labels) == 0:
        return {}
    y = labels.astype(np.int64)
    majority = np.full_like(y, np.bincount(y, minlength=task.num_labels).argmax())
    share = np.bincount(pred.astype(np.int64), minlength=task.num_labels).max() / len(pred)
    return {
        "majority_baseline": float(task.compute_metrics(majority, y)[task.main_metric]),
        "top_class_share": float(share),
    }


COLLAPSE_SHARE = 0.95


def collapse_warning(name: str, metrics: dict[str, Any], main_metric: str) -> str | None:
    """A one-line warning when a model looks degenerate on its eval set: ≥ 95 % of its predictions are one
    class, or its main metric is no better than always predicting the majority class; else ``None``."""
    share, base = metrics.get("top_class_share"), metrics.get("majority_baseline")
    score = metrics.get(main_metric)
    if share is None or base is None or score is None:
        return None
    why = []
    if share >= COLLAPSE_SHARE:
        why.append(f"{100 * share:.1f}% of its predictions are one class")
    if score <= base + 1e-9:
        why.append(f"its {main_metric} {score:.4f} is no better than the majority-class baseline {base:.4f}")
    if not why:
        return None
    return (
        f"{name} looks degenerate: {' and '.join(why)}; check its training (learning rate, steps, the teacher's "
        "own score) before trusting this number"
    )


_GLUE_SPLITS = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}


def _glue(
    name: str,
    text_fields: Sequence[str],
    labels: Sequence[str],
    tsv: TsvLayout,
    hf_cols: Sequence[str],
    metrics: Sequence[str] = ("accuracy",),
    main: str = "accuracy",
    regression: bool = False,
    tsv_files: dict[str, str] | None = None,
    hf_splits: dict[str, str] | None = None,
) -> TaskSpec:
    return TaskSpec(
        name=name,
        text_fields=tuple(text_fields),
        labels=tuple(labels),
        regression=regression,
        metrics=tuple(metrics),
        main_metric=main,
        tsv=tsv,
        tsv_files=tsv_files or dict(_GLUE_SPLITS),
        hf_path=("nyu-mll/glue", name),
        hf_splits=hf_splits or {"train": "train", "dev": "validation", "test": "test"},
        hf_text_columns=tuple(hf_cols),
    )


GLUE_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        # CoLA's train/dev files have no header: source, label, original label, sentence.
        _glue(
            "cola",
            ["sentence"],
            ["0", "1"],
            TsvLayout((3,), 1, header=False),
            ["sentence"],
            metrics=("matthews", "accuracy"),
            main="matthews",
        ),
        _glue("sst2", ["sentence"], ["0", "1"], TsvLayout(("sentence",), "label"), ["sentence"]),
        _glue(
            "mrpc",
            ["sentence1", "sentence2"],
            ["0", "1"],
            TsvLayout(("#1 String", "#2 String"), "Quality"),
            ["sentence1", "sentence2"],
            metrics=("f1", "accuracy"),
            main="f1",
        ),
        _glue(
            "stsb",
            ["sentence1", "sentence2"],
            [],
            TsvLayout(("sentence1", "sentence2"), "score"),
            ["sentence1", "sentence2"],
            metrics=("pearson", "spearman"),
            main="pearson",
            regression=True,
        ),
        _glue(
            "qqp",
            ["question1", "question2"],
            ["0", "1"],
            TsvLayout(("question1", "question2"), "is_duplicate"),
            ["question1", "question2"],
            metrics=("f1", "accuracy"),
            main="accuracy",
        ),
        _glue(
            "mnli",
            ["premise", "hypothesis"],
            ["contradiction", "entailment", "neutral"],
            TsvLayout(("sentence1", "sentence2"), "gold_label"),
            ["premise", "hypothesis"],
            tsv_files={
                "train": "train.tsv",
                "dev": "dev_matched.tsv",
                "dev_matched": "dev_matched.tsv",
                "dev_mismatched": "dev_mismatched.tsv",
                "test": "test_matched.tsv",
            },
            hf_splits={
                "train": "train",
                "dev": "validation_matched",
                "dev_matched": "validation_matched",
                "dev_mismatched": "validation_mismatched",
                "test": "test_matched",
            },
        ),
        _glue(
            "qnli",
            ["question", "sentence"],
            ["entailment", "not_entailment"],
            TsvLayout(("question", "sentence"), "label"),
            ["question", "sentence"],
        ),
        _glue(
            "rte",
            ["sentence1", "sentence2"],
            ["entailment", "not_entailment"],
            TsvLayout(("sentence1", "sentence2"), "label"),
            ["sentence1", "sentence2"],
        ),
        _glue(
            "wnli",
            ["sentence1", "sentence2"],
            ["0", "1"],
            TsvLayout(("sentence1", "sentence2"), "label"),
            ["sentence1", "sentence2"],
        ),
    ]
}

# The HF hub's GLUE labels are integer class ids in its own order; for MNLI that order differs from ours.
HF_LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
}


# Pseudo-tasks for raw-text methods (``distilbert``, ``mlm``) and parallel text: no labels, no GLUE files; the method's own
# ``evaluate`` returns the metrics (held-out MLM loss and perplexity), and ``main_metric`` (higher is better)
# drives model selection.
RAW_TEXT_TASKS: dict[str, TaskSpec] = {
    "mlm": TaskSpec(name="mlm", text_fields=("text",), metrics=(), main_metric="neg_perplexity"),
    # several tasks in one run (MT-DNN KD): the method names the tasks; model selection on the mean of their
    # main metrics
    "multitask": TaskSpec(name="multitask", text_fields=("text",), metrics=(), main_metric="average"),
    # parallel text (seq2seq students, C-MLM): pairs read by data/parallel.py (``data.text_fields`` = the source
    # and target languages); scored by the runner with sacreBLEU on detokenised text
    "translation": TaskSpec(
        name="translation", text_fields=("source", "target"), metrics=(), main_metric="bleu"
    ),
}


def get_task(name: str) -> TaskSpec:
    key = name.lower().replace("-", "").replace("_", "")
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    if key in RAW_TEXT_TASKS:
        return RAW_TEXT_TASKS[key]
    raise KeyError(
        f"unknown task {name!r}{did_you_mean(key, [*GLUE_TASKS, *RAW_TEXT_TASKS])}; known GLUE tasks: {sorted(GLUE_TASKS)} (raw text: {sorted(RAW_TEXT_TASKS)}). "
        "For your own data set `data.task: custom` with `data.text_fields`, `data.label_field` and "
        "`data.labels` (or `data.regression: true`)."
    )


def custom_task(
    name: str,
    text_fields: Sequence[str],
    label_field: str,
    labels: Sequence[str] = (),
    regression: bool = False,
    metrics: Sequence[str] | None = None,
) -> TaskSpec:
    if not text_fields or len(text_fields) > 2:
        raise ValueError(
            f"custom task {name!r}: text_fields must name 1 or 2 columns, got {list(text_fields)}"
        )
    if not regression and len(labels) < 2:
        raise ValueError(
            f"custom task {name!r}: a classification task needs `labels` (at least 2 names, in index order); "
            "for a real-valued target set `regression: true`"
        )
    if not metrics:
        metrics = ("pearson", "spearman") if regression else ("accuracy",)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    fits = REGRESSION_METRICS if regression else set(METRICS) - REGRESSION_METRICS
    if any(m not in fits for m in metrics):
        kind = "a regression" if regression else "a classification"
        raise ValueError(
            f"custom task {name!r}: metrics {list(metrics)} for {kind} task; choose from {sorted(fits)}"
        )
    if "f1" in metrics and len(labels) != 2:
        raise ValueError(
            f"custom task {name!r}: f1 is the binary F1 of the second label; this task has {len(labels)} labels "
            "(use macro_f1)"
        )
    return TaskSpec(
        name=name,
        text_fields=tuple(text_fields),
        labels=tuple(str(x) for x in labels),
        regression=regression,
        metrics=tuple(metrics),
        main_metric=metrics[0],
        tsv=TsvLayout(tuple(text_fields), label_field),
        hf_text_columns=tuple(text_fields),
        hf_label_column=label_field,
    )
