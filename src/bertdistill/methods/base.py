"""The method protocol: what a distillation method tells the one training loop.

A method builds the trainable *bundle* (the student plus anything else that trains: projections, branch
heads, task heads), lists its *stages* (which data, which parameters train at which learning rate, for how
long), says which teacher outputs it *needs*, and turns one batch's student and teacher outputs into a
``dict`` of weighted loss terms. The loop sums the terms, logs each, and never asks which method it runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import MethodConfig, RunConfig
from ..data.loading import Collator, load_examples, subsample, tokenize
from ..data.tasks import TaskSpec
from ..features import Features, Needs
from ..hub import from_pretrained
from ..mlm_head import masked_token_logits

ParamGroups = list[dict[str, Any]]
"""``[{"params": [...], "lr_scale": 0.1}, ...]`` — ``lr_scale`` multiplies the stage's learning rate."""


@dataclass
class Stage:
    """One phase of training. Unset fields fall back to the run's ``train`` section."""

    name: str
    data: str = "train"
    """Key of the dataset (from ``Method.datasets``) this stage iterates."""
    epochs: float | None = None
    max_steps: int | None = None
    lr: float | None = None
    scheduler: str | None = None
    warmup_ratio: float | None = None
    param_groups: Callable[[nn.Module], ParamGroups] | None = None
    """Which parameters train (others are frozen for the stage); ``None`` = the whole bundle."""
    uses_teacher: bool = True
    evaluate: bool = True
    """Whether the task metric is meaningful after this stage (False for e.g. pre-training stages)."""
    cacheable: bool = True
    """Whether teacher outputs for this stage's data may be cached (False when data changes per epoch)."""
    teacher: str | None = None
    """Path / hub name of this stage's teacher (loaded with ``Method.load_teacher_model(path, stage)``);
    ``None`` = the run's ``teacher.path``. E.g. a pre-trained teacher for a general stage, then the
    fine-tuned one for the task stages."""


class Method(ABC):
    """Base class of every method; subclass directly (depth one) and decorate with ``@register``."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    needs: ClassVar[Needs] = Needs()
    requires_teacher: ClassVar[bool] = True

    def __init__(self, run: RunConfig, task: TaskSpec) -> None:
        self.run = run
        self.cfg = run.method
        self.task = task

    # ------------------------------------------------------------------ teacher / student
    def load_teacher_model(self, path: str, stage: Stage | None = None) -> nn.Module:
        """The teacher as a HF model (default: sequence classification). ``stage`` is set when a stage
        names its own teacher (``Stage.teacher``); ``None`` for the run's teacher."""
        from transformers import AutoModelForSequenceClassification

        kwargs: dict[str, Any] = {"trust_remote_code": self.run.teacher.trust_remote_code}
        if self.needs.attentions:
            kwargs["attn_implementation"] = "eager"
        return from_pretrained(AutoModelForSequenceClassification, path, **kwargs)

    @abstractmethod
    def build_student(self, teacher: nn.Module | None) -> nn.Module:
        """The trainable bundle. Everything that trains must be a submodule of it."""

    def export_model(self, bundle: nn.Module) -> Any:
        """The part of the bundle that is saved as the final HF model (default: the bundle itself)."""
        return bundle

    def export_extras(self, bundle: nn.Module) -> dict[str, Tensor]:
        """Trainable tensors of the bundle that are not part of the exported HF model but that a later run
        may want back (e.g. TinyBERT's projections, to go on from a general stage to a task stage).
        Saved as ``extras.safetensors`` next to each stage's model; default: none."""
        return {}

    def stages(self) -> list[Stage]:
        return [Stage("train")]

    def teacher_needs(self, stage: Stage | None = None) -> Needs:
        return self.needs

    # ------------------------------------------------------------------ data
    def datasets(self, tokenizer: Any) -> dict[str, Dataset]:
        """Datasets keyed by name: ``train`` (and ``eval`` when the task has labelled dev data)."""
        d = self.run.data
        train = subsample(
            load_examples(d, self.task, d.train_split), d.max_train_examples, self.run.train.seed
        )
        out: dict[str, Dataset] = {"train": tokenize(train, tokenizer, d.max_length)}
        if d.eval_split:
            ev = subsample(
                load_examples(d, self.task, d.eval_split), d.max_eval_examples, self.run.train.seed
            )
            if ev.labels is not None:
                out["eval"] = tokenize(ev, tokenizer, d.max_length)
        return out

    def collator(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return Collator(tokenizer.pad_token_id or 0, regression=self.task.regression)

    # ------------------------------------------------------------------ training step
    def student_forward(self, bundle: nn.Module, batch: Mapping[str, Any], stage: Stage) -> Any:
        return bundle(**batch["inputs"])

    @abstractmethod
    def loss(
        self, stage: Stage, batch: Mapping[str, Any], student_out: Any, teacher_out: Features | None
    ) -> dict[str, Tensor]:
        """Weighted loss terms; the loop sums them."""

    # ------------------------------------------------------------------ evaluation
    def predict_logits(self, bundle: nn.Module, batch: Mapping[str, Any]) -> Tensor:
        return self.export_model(bundle)(**batch["inputs"]).logits

    @torch.no_grad()
    def evaluate(
        self, bundle: nn.Module, loader: Any, gather: Callable[[Tensor], Tensor] | None = None
    ) -> dict[str, float]:
        """Task metrics of the bundle on ``loader`` (labelled batches)."""
        was_training = bundle.training
        bundle.eval()
        preds, labels = [], []
        for batch in loader:
            logits = self.predict_logits(bundle, batch)
            y = batch["labels"]
            if gather is not None:
                logits, y = gather(logits), gather(y)
            preds.append(logits.float().cpu())
            labels.append(y.cpu())
        bundle.train(was_training)
        return metrics_from_logits(self.task, torch.cat(preds), torch.cat(labels))


def metrics_from_logits(task: TaskSpec, logits: Tensor, labels: Tensor) -> dict[str, float]:
    lg = logits.numpy()
    pred = lg.reshape(-1) if task.regression else np.argmax(lg, axis=-1)
    return task.compute_metrics(pred, labels.numpy())


@torch.no_grad()
def mlm_metrics(
    model: nn.Module, loader: Any, gather: Callable[[Tensor], Tensor] | None = None
) -> dict[str, float]:
    """Masked-LM loss and perplexity on batches with ``mlm_labels`` (−100 = not predicted):
    ``mlm_loss`` = mean cross-entropy over all predicted tokens of the loader, ``perplexity`` = exp of it,
    ``neg_perplexity`` = −perplexity (higher is better, for model selection)."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros(()), torch.zeros(())
    for batch in loader:
        labels = batch["mlm_labels"]
        logits, picked = masked_token_logits(model, batch["inputs"], labels)  # predicted positions only
        per_token = torch.nn.functional.cross_entropy(logits.float(), picked, reduction="none")
        # per sequence, so that gathering drops padded duplicates correctly
        ce = torch.zeros(labels.shape[0], dtype=per_token.dtype, device=per_token.device)
        keep = (labels != -100).to(ce.device)
        ce.index_add_(0, keep.nonzero()[:, 0], per_token)
        n = keep.sum(-1).to(ce.dtype)
        if gather is not None:
            ce, n = gather(ce), gather(n)
        total += ce.sum().cpu()
        count += n.sum().cpu()
    model.train(was_training)
    loss = float(total / count.clamp_min(1.0))
    ppl = float(np.exp(min(loss, 50.0)))
    return {"mlm_loss": loss, "perplexity": ppl, "neg_perplexity": -ppl}


def save_hf_model(model: Any, tokenizer: Any, out_dir: Path) -> None:
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


__all__ = ["Method", "ParamGroups", "Stage", "metrics_from_logits", "mlm_metrics", "save_hf_model"]
