"""MT-DNN KD — Liu, He, Chen & Gao 2019, "Improving Multi-Task Deep Neural Networks via Knowledge
Distillation for Natural Language Understanding".

Per task, an *ensemble* of fine-tuned teachers (different seeds or models) gives soft targets: the **mean
of their class probabilities** (not of their logits), or the mean prediction for regression
(:class:`~bertdistill.teachers.EnsembleTeacher`; cached once per (teacher set, task data)). One multi-task
student — a shared encoder with one head per task — learns them together: each mini-batch comes from one
task, the task order reshuffled every epoch (:mod:`bertdistill.data.multitask`). Loss of a batch of task k:

* k has teachers, classification: ``w·H(p_ens, softmax(z)) + (1 − w)·CE(z, y)`` with w = ``soft_weight``
  = 0.5 (the paper's Fig. 2: the *average* of the soft and the hard cross-entropy); ``temperature`` t > 1
  softens both sides (×t² on the soft term; the paper uses t = 1);
* k has teachers, regression: ``(1 − w)·MSE(z, y) + w·MSE(z, z_ens)`` (later releases of the official code,
  ``kd_loss: MseCriterion``), or with ``regression_kd: none`` the first release's ``MSE(z, y)`` only;
* k has no teachers: its usual loss (CE, or MSE for regression).

The saved student is one dir with the shared encoder and every head (``multitask.json``, ``heads/<task>/``,
``model.safetensors``); ``evaluate --head TASK``, ``predict --head TASK`` and ``compare`` run it, and
``bertdistill export-task DIR TASK -o OUT`` writes one head as a standard single-task HF dir
(``AutoModelForSequenceClassification``). Differences from the paper: ``docs/methods/mtdnn_kd.md``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from torch.utils.data import Dataset, Sampler
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from ..config import ConfigError, MethodConfig
from ..data.loading import Collator, GroupBatchSampler, GroupedDataset
from ..data.multitask import SAMPLING, TaskEntry, check_tasks, task_datasets, task_sampler
from ..data.tasks import TaskSpec, metrics_from_logits
from ..hub import from_pretrained
from ..losses import hard_ce, regression_mse
from ..protocol import (
    Batch,
    BuiltStudent,
    Features,
    InferenceOption,
    LogitsGraph,
    Method,
    MethodTestConfig,
    Needs,
    OnnxGraph,
    OnnxRun,
    Prediction,
    Runner,
    Stage,
    model_inputs,
)
from ..registry import register
from ..students import build_student

MULTITASK_FILE = "multitask.json"


@dataclass
class MTDNNConfig(MethodConfig):
    name: str = "mtdnn_kd"
    tasks: list[TaskEntry] = field(default_factory=list)
    """The run's tasks: ``[{task: sst2, path: ..., teachers: [dir1, dir2, dir3]}, {task: stsb, ...}]``."""
    soft_weight: float = 0.5
    """Weight w of the soft (ensemble) term; 1 − w weighs the gold labels (paper: the average, w = 0.5)."""
    temperature: float = 1.0
    regression_kd: str = "mse"
    """Regression tasks with teachers: ``mse`` (label MSE + MSE to the ensemble mean, later official releases)
    or ``none`` (label MSE only, the first release)."""
    sampling: str = "shuffle"
    """``shuffle`` (paper: every task's batches shuffled together each epoch), ``proportional`` or
    ``temperature`` (tasks drawn ∝ size^(1/sampling_temperature))."""
    sampling_temperature: float = 2.0

    def __post_init__(self) -> None:
        check_tasks(self.tasks)
        if not 0.0 <= self.soft_weight <= 1.0:
            raise ConfigError(f"method.soft_weight must be in [0, 1], got {self.soft_weight}")
        if self.temperature <= 0:
            raise ConfigError(f"method.temperature must be > 0, got {self.temperature}")
        if self.regression_kd not in ("mse", "none"):
            raise ConfigError(f"method.regression_kd must be mse or none, got {self.regression_kd!r}")
        if self.sampling not in SAMPLING:
            raise ConfigError(f"method.sampling must be one of {list(SAMPLING)}, got {self.sampling!r}")


# ----------------------------------------------------------------------------------------------- the student


class MultiTaskModel(nn.Module):
    """One HF sequence classifier per task, all sharing one base encoder (``heads[k].<base> is shared``): the
    shared weights are one set of parameters, so the optimizer, DDP and checkpoints see them once."""

    def __init__(self, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        first: Any = next(iter(heads.values()))
        prefix = first.base_model_prefix
        shared = getattr(first, prefix)
        for h in heads.values():
            setattr(h, prefix, shared)
        self.heads = nn.ModuleDict(dict(heads))
        self.base_prefix = prefix

    @property
    def encoder(self) -> nn.Module:
        return getattr(next(iter(self.heads.values())), self.base_prefix)  # type: ignore[no-any-return]

    def forward(self, task: str, **inputs: Any) -> Any:
        if task not in self.heads:
            raise ConfigError(f"no head {task!r}; the heads are {list(self.heads)}")
        return self.heads[task](**inputs)

    def save_pretrained(self, out_dir: str | os.PathLike[str], **_: Any) -> None:
        """``multitask.json`` (every head's HF config) and ``model.safetensors`` (shared tensors stored once):
        flat files, so that the run's atomic publish of the best model copies them as they are."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        heads = {name: cast(Any, head).config.to_dict() for name, head in self.heads.items()}
        save_model(self, str(out / "model.safetensors"))
        (out / MULTITASK_FILE).write_text(json.dumps({"base": self.base_prefix, "heads": heads}, indent=1))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> MultiTaskModel:
        p = Path(path)
        if not (p / MULTITASK_FILE).is_file():
            raise ConfigError(f"{p} is not a multi-task student dir (no {MULTITASK_FILE})")
        meta = json.loads((p / MULTITASK_FILE).read_text())
        heads = {}
        for name, cfg in meta["heads"].items():
            cfg = dict(cfg)
            config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
            heads[name] = AutoModelForSequenceClassification.from_config(config)
        model = cls(heads)
        missing, unexpected = load_model(model, str(p / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"{p}: weights do not fit the heads (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
            )
        return model.eval()


def label_fields(spec: TaskSpec) -> dict[str, Any]:
    if spec.regression:
        return {
            "num_labels": 1,
            "problem_type": "regression",
            "id2label": {0: "score"},
            "label2id": {"score": 0},
        }
    return {
        "num_labels": spec.num_labels,
        "problem_type": "single_label_classification",
        "id2label": dict(enumerate(spec.labels)),
        "label2id": {lab: i for i, lab in enumerate(spec.labels)},
    }


def multitask_student(template: nn.Module, specs: Mapping[str, TaskSpec]) -> MultiTaskModel:
    """Heads for every task on ``template``'s encoder (copied from it: its own classifier is dropped)."""
    heads: dict[str, nn.Module] = {}
    base = getattr(template, str(template.base_model_prefix))
    for name, spec in specs.items():
        cfg = copy.deepcopy(template.config)  # type: ignore[arg-type]
        for k, v in label_fields(spec).items():
            setattr(cfg, k, v)
        head = AutoModelForSequenceClassification.from_config(cfg)
        setattr(head, head.base_model_prefix, base)
        heads[name] = head
    return MultiTaskModel(heads)


# ----------------------------------------------------------------------------------------------- inference


class MultiTaskRunner(Runner):
    """A multi-task student at inference: ``head`` picks the task (required when it has several); grouped
    evaluation batches (training-time model selection) run each batch on its group's head and are scored per
    task, with ``average`` = the mean of the tasks' main metrics."""

    options: ClassVar[tuple[InferenceOption, ...]] = (
        InferenceOption(
            "head", str, "the task head to run (a multi-task student has one per task)", shapes_graph=True
        ),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        entries = [TaskEntry(**e) for e in (self.recipe.get("method") or {}).get("tasks", [])]
        self.entries = {e.name: e for e in entries}
        self.specs = {e.name: e.spec() for e in entries}
        model: Any = self.model
        self.names = list(model.heads) if hasattr(model, "heads") else list(self.specs)
        self.width = max((s.num_labels for s in self.specs.values()), default=1)

    @classmethod
    def load(cls, path: Any, recipe: Mapping[str, Any], task: Any) -> Runner:
        p = str(path)
        return cls(MultiTaskModel.from_pretrained(p), from_pretrained(AutoTokenizer, p), task, p, recipe)

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        out = super().check_options(options)
        head = out.get("head")
        if head is not None and head not in self.names:
            raise ConfigError(f"--head {head!r}: this student's heads are {self.names}")
        return out

    def head(self, options: Mapping[str, Any]) -> str:
        head = options.get("head")
        if head is None and len(self.names) == 1:
            return self.names[0]
        if head is None:
            raise ConfigError(f"a multi-task student: choose a head with --head (one of {self.names})")
        return str(head)

    def label_names(self) -> dict[int, str]:
        # the head's task (task_for) names its classes; the multi-task model has no one config
        labels = list(self.task.labels) if self.task is not None and self.task.name in self.specs else []
        return dict(enumerate(labels))

    def task_for(self, options: Mapping[str, Any]) -> TaskSpec | None:
        if options.get("head") is None and len(self.names) != 1:
            return self.task
        return self.specs.get(self.head(options), self.task)

    def eval_data(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        e = self.entries[self.head(options)]
        return {
            "task": e.task,
            "path": e.path,
            "format": e.format,
            "text_fields": e.text_fields,
            "label_field": e.label_field,
            "labels": e.labels,
            "regression": e.regression,
        }

    def is_pair(self) -> bool:
        return any(s.is_pair for s in self.specs.values()) if self.task is None else self.task.is_pair

    def predict(self, batch: Batch, **options: Any) -> Prediction:
        if options.get("head") is None and "group" in batch:  # grouped evaluation: pad to one width
            g = batch["group"]
            z = self.model(g, **batch["inputs"]).logits.float()
            pad = torch.full((z.shape[0], self.width - z.shape[1]), float("nan"), device=z.device)
            group = torch.full((z.shape[0],), self.names.index(g), device=z.device)
            return Prediction(torch.cat([z, pad], -1), {"group": group})
        return Prediction(self.model(self.head(options), **batch["inputs"]).logits)

    def metrics(
        self, logits: Tensor | None, targets: Tensor | None, extras: Mapping[str, Tensor]
    ) -> dict[str, float]:
        if "group" not in extras:
            return super().metrics(logits, targets, extras)
        assert logits is not None and targets is not None
        out: dict[str, float] = {}
        mains = []
        for k, name in enumerate(self.names):
            rows = extras["group"] == k
            if not rows.any():
                continue
            spec = self.specs[name]
            m = metrics_from_logits(spec, logits[rows][:, : spec.num_labels], targets[rows])
            out.update({f"{name}/{key}": v for key, v in m.items()})
            mains.append(m[spec.main_metric])
        out["average"] = sum(mains) / max(1, len(mains))
        return out

    def onnx_graphs(self, batch: Batch, **options: Any) -> list[OnnxGraph]:
        """One head at a time (``--head``): that task's HF classifier, shared encoder included."""
        model: Any = cast(Any, self.model).heads[self.head(options)]
        inputs = model_inputs(model, batch["inputs"])
        return [OnnxGraph("model", LogitsGraph(model, list(inputs)), inputs, ("logits",))]

    def onnx_predict(self, run: OnnxRun, batch: Batch, **options: Any) -> Prediction:
        self.head(options)  # the export is one head: grouped batches (several heads) do not apply
        return Prediction(run("model", batch["inputs"])[0])

    def export_head(self, head: str, out_dir: str | os.PathLike[str]) -> None:
        if head not in self.names:
            raise ConfigError(f"no head {head!r}; this student's heads are {self.names}")
        model: Any = cast(Any, self.model).heads[head]
        # where the single-task dir came from, for tools that read a run's method (a head has no run config)
        model.config.bertdistill_exported_from = {"method": "mtdnn_kd", "head": head}
        try:
            model.save_pretrained(out_dir, safe_serialization=True)
        finally:
            del model.config.bertdistill_exported_from
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------- the method


@register("mtdnn_kd")
class MTDNNKD(Method):
    """MT-DNN KD: per-task ensembles of teachers (mean probabilities) teach one multi-task student."""

    config_cls = MTDNNConfig
    sparse_parameters = True  # one task head per batch

    @classmethod
    def control_recipe(cls, recipe: dict[str, Any], steps: int) -> dict[str, Any] | None:
        # the same multi-task student, tasks, sampling and steps on the labels only (no ensemble soft targets)
        recipe["method"]["soft_weight"] = 0.0
        recipe["train"]["max_steps"] = steps
        return recipe

    runner_cls = MultiTaskRunner
    cfg: MTDNNConfig
    test_config = MethodTestConfig(
        sections={
            "method": {
                "tasks": [
                    {"task": "sst2", "path": "{sst2}", "teachers": ["{teacher}"]},
                    {"task": "stsb", "path": "{stsb}"},
                ]
            },
            "teacher": {"path": None},
            "student": {"init": "random", "path": "{teacher}", "num_layers": 2},
            "data": {"task": "multitask", "path": None},
        },
        # the soft term alone on the task with a teacher (a random teacher and the gold labels disagree)
        overfit={"method": {"soft_weight": 1.0}},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.task.name != "multitask":
            raise ConfigError("mtdnn_kd names its tasks in method.tasks: set data.task: multitask")
        self.specs = {t.name: t.spec() for t in self.cfg.tasks}

    def datasets(self, tokenizer: Any) -> dict[str, Dataset]:
        d, seed = self.run.data, self.run.train.seed
        out: dict[str, Dataset] = {}
        train = task_datasets(
            self.cfg.tasks,
            tokenizer,
            d.train_split,
            d.max_length,
            seed,
            d.max_train_examples,
            d.selection_fraction,
        )
        assert train is not None
        out["train"] = train
        if d.eval_split or d.selection_fraction is not None:
            ev = task_datasets(
                self.cfg.tasks,
                tokenizer,
                d.eval_split or "dev",
                d.max_length,
                seed,
                d.max_eval_examples,
                d.selection_fraction,
            )
            if ev is not None:
                out["eval"] = ev
        return out

    def batch_sampler(
        self, data: Dataset, batch_size: int, *, shuffle: bool, seed: int, stage: Stage | None
    ) -> Sampler[list[int]]:
        if not isinstance(data, GroupedDataset):
            raise ConfigError("mtdnn_kd batches grouped (multi-task) data")
        if not shuffle:
            return GroupBatchSampler(data, batch_size, shuffle=False, seed=seed)
        return task_sampler(data, batch_size, self.cfg.sampling, self.cfg.sampling_temperature, seed)

    def collator(self, tokenizer: Any, datasets: Mapping[str, Dataset]) -> Any:
        return Collator(tokenizer.pad_token_id or 0)  # labels typed per batch (float for regression tasks)

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
        first = next(iter(self.specs.values()))
        if self.run.student.init == "teacher" and teacher is None:
            # a multi-task run has no single teacher: the layers come from `student.path` (a fine-tuned
            # model); its own classifier is dropped by multitask_student
            source = self.run.student.path
            if not source:
                raise ConfigError(
                    "mtdnn_kd: student.init: teacher copies layers from a model; set student.path to a "
                    "model fine-tuned on one of the tasks, or use init: pretrained / random"
                )
            teacher = self.load_teacher_model(source)
            n = cast(Any, teacher).config.num_labels
            match = next((s for s in self.specs.values() if s.num_labels == n), None)
            if match is None:
                raise ConfigError(
                    f"mtdnn_kd: student.path {source!r} has {n} outputs and no task of this run has as many; "
                    "point it at a model fine-tuned on one of the tasks"
                )
            first = match
        template, info = build_student(self.run.student, teacher, first)  # type: ignore[arg-type]
        model = multitask_student(template, self.specs)
        teachers = {t.name: len(t.teachers) for t in self.cfg.tasks}
        return BuiltStudent(model, {**info, "heads": list(self.specs), "teachers per task": teachers})

    def stages(self) -> list[Stage]:
        groups = {t.name: list(t.teachers) for t in self.cfg.tasks}
        return [Stage("train", uses_teacher=any(groups.values()), group_teachers=groups)]

    def teacher_needs(self, stage: Stage, bundle: nn.Module) -> Needs:
        return Needs(logits=True)

    def student_inputs(self, batch: Batch, stage: Stage) -> dict[str, Any]:
        return {**batch["inputs"], "task": batch["group"]}

    def loss(
        self, stage: Stage, batch: Batch, student_out: Any, teacher_out: Features | None, bundle: nn.Module
    ) -> dict[str, Tensor]:
        c, spec = self.cfg, self.specs[batch["group"]]
        z, y = student_out.logits, batch["labels"]
        w = c.soft_weight
        if spec.regression:
            if teacher_out is None or c.regression_kd == "none":
                return {"mse": regression_mse(z, y)}
            assert teacher_out.logits is not None
            return {
                "mse": (1 - w) * regression_mse(z, y),
                "kd_mse": w * regression_mse(z, teacher_out.logits),
            }
        if teacher_out is None:
            return {"ce": hard_ce(z, y)}
        assert teacher_out.logits is not None
        return {
            "soft": w * ensemble_soft_ce(z, teacher_out.logits, c.temperature),
            "ce": (1 - w) * hard_ce(z, y),
        }

    def runner(self, bundle: nn.Module, tokenizer: Any, stage: Stage | None) -> Runner:
        return MultiTaskRunner(bundle, tokenizer, self.task, None, self.run.to_dict())


def ensemble_soft_ce(student_logits: Tensor, ensemble_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``t² · mean_rows(−Σ_c p_ens,c · log softmax(z_S/t)_c)`` with ``p_ens = softmax(ensemble_logits / t)``;
    the ensemble's logits are ``log mean_i p_i``, so at t = 1 ``p_ens`` is exactly the members' mean
    probability (MT-DNN KD's soft target)."""
    t = temperature
    p = torch.softmax(ensemble_logits.float() / t, dim=-1)
    return -(p * torch.log_softmax(student_logits.float() / t, dim=-1)).sum(-1).mean() * t * t


__all__ = [
    "MTDNNKD",
    "MTDNNConfig",
    "MultiTaskModel",
    "MultiTaskRunner",
    "ensemble_soft_ce",
    "multitask_student",
]
