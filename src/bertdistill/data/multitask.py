"""Several tasks in one run (MT-DNN KD): each task's data, tokenised into one :class:`GroupedDataset`, and
the samplers that make task batches.

A task entry names a registry task (``sst2``, ``stsb`` ...) or a custom one (``task: custom`` with its
``text_fields`` / ``labels`` / ``regression``), where its data lives, and the teachers whose ensemble teaches it
(none = its usual loss only). Batches never mix tasks. ``shuffle`` (the paper) cuts every task into batches
and shuffles all of them together each epoch; ``proportional`` / ``temperature`` draw, for each of the
epoch's batch slots, a task with probability ∝ n_task^(1/T) (T = 1: proportional to its size), cycling
through that task's own shuffled batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ..config import ConfigError, DataConfig
from .loading import (
    BatchSampler,
    GroupBatchSampler,
    GroupedDataset,
    TokenizedDataset,
    load_examples,
    resolve_task,
    run_eval_examples,
    run_train_examples,
    subsample,
    tokenize,
)
from .tasks import TaskSpec

SAMPLING = ("shuffle", "proportional", "temperature")


@dataclass
class TaskEntry:
    """One task of a multi-task run."""

    name: str = ""
    """The task's key (its head's name); default: ``task``."""
    task: str = ""
    """A registry task (``sst2``, ``mrpc``, ``stsb`` ...) or ``custom``."""
    path: str | None = None
    """Its data: a GLUE-style TSV dir, a CSV/JSONL file or dir; unset = the HF hub."""
    format: str = "auto"
    text_fields: list[str] = field(default_factory=list)
    label_field: str = "label"
    labels: list[str] = field(default_factory=list)
    regression: bool = False
    metrics: list[str] = field(default_factory=list)
    """A custom task's metrics (``data.metrics``); the first is its main metric in the run's average."""
    teachers: list[str] = field(default_factory=list)
    """Fine-tuned teacher dirs of this task; several = an ensemble (the mean of their probabilities);
    none = the task trains on its labels only."""
    max_train_examples: int | None = None
    """Subsample this task's training set (seeded); unset = all."""

    def __post_init__(self) -> None:
        if not self.task:
            raise ConfigError("each entry of method.tasks needs `task` (a GLUE task name or custom)")
        self.name = self.name or self.task

    def data_config(self, max_length: int) -> DataConfig:
        return DataConfig(
            task=self.task,
            path=self.path,
            format=self.format,
            text_fields=list(self.text_fields),
            label_field=self.label_field,
            labels=list(self.labels),
            regression=self.regression,
            metrics=list(self.metrics),
            max_length=max_length,
        )

    def spec(self) -> TaskSpec:
        spec = resolve_task(self.data_config(128))
        return dataclasses.replace(spec, name=self.name) if spec.name != self.name else spec


def check_tasks(tasks: Sequence[TaskEntry]) -> None:
    if not tasks:
        raise ConfigError("method.tasks is empty: list the tasks of the run (task, path, teachers)")
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"method.tasks: task name(s) {dup} appear twice; give each entry a distinct `name`")


def task_datasets(
    tasks: Sequence[TaskEntry],
    tokenizer: Any,
    split: str,
    max_length: int,
    seed: int,
    max_examples: int | None = None,
    selection_fraction: float | None = None,
) -> GroupedDataset | None:
    """The tasks' ``split`` tokenised into one grouped dataset (``None`` when no task has labelled data for
    it). Each part carries its ``spec`` (TaskSpec) and ``regression``. Training sets are capped at the
    entry's ``max_train_examples``, else ``max_examples`` (seeded subsample); evaluation sets at
    ``max_examples``. With ``selection_fraction`` (``data.selection_fraction``) each task holds out that slice of
    its training set and is evaluated on it instead of ``split``."""
    parts: dict[str, TokenizedDataset] = {}
    for t in tasks:
        cfg = dataclasses.replace(t.data_config(max_length), selection_fraction=selection_fraction)
        try:
            if selection_fraction is None:
                ex = load_examples(cfg, resolve_task(cfg), split)
            else:
                picked = (run_train_examples if split == "train" else run_eval_examples)(
                    cfg, resolve_task(cfg)
                )
                assert picked is not None  # a selection slice always exists
                ex = picked
        except ConfigError:
            if split == "train":
                raise
            continue  # a task without this eval split is not scored
        if ex.labels is None:
            if split == "train":
                raise ConfigError(f"task {t.name!r}: its training split has no labels")
            continue
        cap = (t.max_train_examples or max_examples) if split == "train" else max_examples
        ex = subsample(ex, cap, seed)
        ds = tokenize(ex, tokenizer, max_length)
        ds.spec = t.spec()  # type: ignore[attr-defined]
        ds.regression = ds.spec.regression  # type: ignore[attr-defined]
        parts[t.name] = ds
    return GroupedDataset(parts) if parts else None


class TaskSampler(Sampler[list[int]]):
    """Per-epoch task batches drawn with probability ∝ n_task^(1/temperature), the epoch having as many
    batches as all tasks together; each task's batches come in its own shuffled order, cycled when used up.
    Deterministic under ``seed + epoch`` (a resumed run sees the same order)."""

    def __init__(
        self, data: GroupedDataset, batch_size: int, temperature: float = 1.0, seed: int = 0
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"the task-sampling temperature must be > 0, got {temperature}")
        self.data = data
        self.seed = seed
        self.epoch = 0
        self.samplers = []
        for k, name in enumerate(data.names):
            part = data.parts[name]
            self.samplers.append(BatchSampler(part.lengths, batch_size, True, True, seed + 7919 * (k + 1)))  # type: ignore[attr-defined]
        sizes = np.array([len(data.parts[n]) for n in data.names], dtype=np.float64)  # type: ignore[arg-type]
        w = sizes ** (1.0 / temperature)
        self.probs = w / w.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        picks = torch.multinomial(torch.tensor(self.probs), len(self), replacement=True, generator=g).tolist()
        pools: list[list[list[int]]] = [[] for _ in self.samplers]
        rounds = [0] * len(self.samplers)
        for k in picks:
            if not pools[k]:
                s = self.samplers[k]
                s.set_epoch(self.epoch * 1000 + rounds[k])
                rounds[k] += 1
                start = int(self.data.starts[k])
                pools[k] = [[start + i for i in b] for b in s][::-1]
            yield pools[k].pop()


def task_sampler(
    data: GroupedDataset, batch_size: int, mode: str, temperature: float, seed: int, shuffle: bool = True
) -> Sampler[list[int]]:
    if not shuffle or mode == "shuffle":
        return GroupBatchSampler(data, batch_size, shuffle=shuffle, seed=seed)
    if mode == "proportional":
        return TaskSampler(data, batch_size, 1.0, seed)
    if mode == "temperature":
        return TaskSampler(data, batch_size, temperature, seed)
    raise ConfigError(f"task sampling must be one of {list(SAMPLING)}, got {mode!r}")


__all__ = ["SAMPLING", "TaskEntry", "TaskSampler", "check_tasks", "task_datasets", "task_sampler"]
