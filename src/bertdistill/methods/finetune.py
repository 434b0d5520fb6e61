"""Plain fine-tuning on gold labels — for teachers, and for the no-distillation baseline of every table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import MethodConfig
from ..losses import hard_ce, regression_mse
from ..protocol import Batch, BuiltStudent, Features, Method, Stage
from ..registry import register
from ..students import build_student


@dataclass
class FinetuneConfig(MethodConfig):
    name: str = "finetune"


@register("finetune")
class Finetune(Method):
    """Supervised fine-tuning without a teacher (teacher training; the no-KD baseline)."""

    config_cls = FinetuneConfig

    @classmethod
    def control_recipe(cls, recipe: dict[str, Any], steps: int) -> dict[str, Any] | None:
        return None

    @classmethod
    def control_unavailable(cls) -> str:
        return (
            "finetune trains without a teacher: it is the control (use --control with a distillation method)"
        )

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
        model, info = build_student(self.run.student, teacher, self.task)  # type: ignore[arg-type]
        return BuiltStudent(model, info)

    def stages(self) -> list[Stage]:
        return [Stage("train", uses_teacher=False)]

    def loss(
        self, stage: Stage, batch: Batch, student_out: Any, teacher_out: Features | None, bundle: nn.Module
    ) -> dict[str, Tensor]:
        if self.task.regression:
            return {"mse": regression_mse(student_out.logits, batch["labels"])}
        return {"ce": hard_ce(student_out.logits, batch["labels"])}
