"""Plain fine-tuning on gold labels — for teachers, and for the no-distillation baseline of every table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..config import MethodConfig
from ..features import Features
from ..losses import hard_ce, regression_mse
from ..registry import register
from ..students import build_student
from .base import Method, Stage


@dataclass
class FinetuneConfig(MethodConfig):
    name: str = "finetune"


@register("finetune")
class Finetune(Method):
    """Supervised fine-tuning without a teacher (teacher training; the no-KD baseline)."""

    config_cls = FinetuneConfig
    requires_teacher = False

    def build_student(self, teacher: nn.Module | None) -> nn.Module:
        model, info = build_student(self.run.student, teacher, self.task)  # type: ignore[arg-type]
        self.student_info = info
        return model

    def stages(self) -> list[Stage]:
        return [Stage("train", uses_teacher=False)]

    def loss(
        self, stage: Stage, batch: Mapping[str, Any], student_out: Any, teacher_out: Features | None
    ) -> dict[str, Tensor]:
        if self.task.regression:
            return {"mse": regression_mse(student_out.logits, batch["labels"])}
        return {"ce": hard_ce(student_out.logits, batch["labels"])}
