"""Patient KD — Sun et al. 2019, "Patient Knowledge Distillation for BERT Model Compression".

``L = (1 − α)·CE(z_S, y) + α·t²·KL(softmax(z_T/t) ‖ softmax(z_S/t)) + β·L_PT`` where the *patient* term
``L_PT`` compares the L2-normalised [CLS] states of the student's intermediate layers with those of mapped
teacher layers: PKD-Skip (every k-th teacher layer) or PKD-Last (the teacher's top layers). The student's last
layer is left to the soft-target term. Students start from the first k layers of the pre-trained backbone
(``pkd.init_from: pretrained``; needs ``pretrained_path``) or of the fine-tuned teacher (``teacher``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers.utils import ModelOutput

from ..config import ConfigError, MethodConfig
from ..features import check_layer_outputs
from ..hub import from_pretrained
from ..losses import hinton_terms
from ..protocol import Batch, BuiltStudent, Features, Method, MethodTestConfig, Needs, Stage
from ..registry import register
from ..students import build_student, copy_layers, num_layers


def pkd_teacher_layers(n_teacher: int, n_student: int, strategy: str) -> list[int]:
    """1-based teacher layers (= ``hidden_states`` indices) learnt by student layers 1 … M−1.

    skip: layer j ↔ teacher j·N/M (12→6: 2, 4, 6, 8, 10); last: the N−M+1 … N−1 (12→6: 7, 8, 9, 10, 11).
    """
    if not 1 < n_student <= n_teacher:
        raise ConfigError(f"pkd needs 2 <= student layers ({n_student}) <= teacher layers ({n_teacher})")
    m = n_student - 1
    if strategy == "skip":
        if n_teacher % n_student:
            raise ConfigError(
                f"pkd skip needs the teacher depth ({n_teacher}) to be a multiple of the student's ({n_student}); "
                "use strategy: last or give method.teacher_layers"
            )
        k = n_teacher // n_student
        return [j * k for j in range(1, n_student)]
    if strategy == "last":
        return list(range(n_teacher - m, n_teacher))
    raise ConfigError(f"method.strategy must be skip or last, got {strategy!r}")


def patient_loss(student_cls: Tensor, teacher_cls: Tensor) -> Tensor:
    """``mean((h_S/‖h_S‖₂ − h_T/‖h_T‖₂)²)`` over examples × layers × units (official ``F.mse_loss`` of the
    normalised [CLS] vectors). Inputs ``[B, layers, H]``; invariant to rescaling any state."""
    return F.mse_loss(F.normalize(student_cls.float(), dim=-1), F.normalize(teacher_cls.float(), dim=-1))


def _depth(num_layers: int | None, layers: list[int] | None) -> int | None:
    """The student's depth from its ``student`` section: ``num_layers``, else as many as ``layers`` names."""
    return num_layers or len(layers or []) or None


@dataclass
class PKDConfig(MethodConfig):
    name: str = "pkd"
    strategy: str = "skip"
    alpha: float = 0.2
    """Weight of the soft term (1 − alpha: the gold labels). The paper's typical run has 0.7 at t 10; 0.2 at t 1
    keeps the gold label every target's argmax (docs/methods/pkd.md, "Defaults and the evidence")."""
    beta: float = 500.0
    temperature: float = 1.0
    teacher_layers: list[int] | None = None
    """Explicit 1-based teacher layers for student layers 1..M−1 (overrides ``strategy``)."""
    init_from: str = "pretrained"
    """``pretrained`` (the paper): the first k layers of the pre-trained backbone ``pretrained_path``;
    ``teacher``: the ``student`` section decides (by default a copy of k layers of the fine-tuned teacher)."""
    pretrained_path: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"method.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0 or self.beta < 0:
            raise ConfigError("method.temperature must be > 0 and method.beta >= 0")
        if self.strategy not in ("skip", "last"):
            raise ConfigError(f"method.strategy must be skip or last, got {self.strategy!r}")
        if self.init_from not in ("teacher", "pretrained"):
            raise ConfigError(f"method.init_from must be teacher or pretrained, got {self.init_from!r}")
        if self.init_from == "pretrained" and not self.pretrained_path:
            raise ConfigError(
                "pkd initialises the student from the first k layers of the pre-trained backbone (the paper's "
                "method.init_from: pretrained): set method.pretrained_path to it (e.g. minilm-l6, "
                "bert-base-uncased), or set method.init_from: teacher to build the student from the student "
                "section (a copy of the fine-tuned teacher's layers by default)"
            )


@dataclass
class PKDOutput(ModelOutput):
    logits: Tensor | None = None
    cls: Tensor | None = None
    """``[B, M−1, H_teacher]``: [CLS] states of student layers 1..M−1 (projected when widths differ)."""


class PKDStudent(nn.Module):
    """The student plus, when widths differ, a projection of its [CLS] states to the teacher's width.
    ``teacher_layers[j]`` is the 1-based teacher layer (= ``hidden_states`` index) that student layer j+1
    learns."""

    def __init__(self, model: nn.Module, proj: nn.Module | None, teacher_layers: list[int]) -> None:
        super().__init__()
        self.model = model
        self.proj = proj
        self.teacher_layers = list(teacher_layers)

    def forward(self, **inputs: Any) -> PKDOutput:
        out = self.model(**inputs, output_hidden_states=True)
        check_layer_outputs(self.model, out)
        hs = out.hidden_states  # M+1 entries: embeddings, layers 1..M
        cls = torch.stack([hs[j][:, 0] for j in range(1, len(hs) - 1)], dim=1)
        return PKDOutput(logits=out.logits, cls=self.proj(cls) if self.proj is not None else cls)


@register("pkd")
class PKD(Method):
    """Patient KD: soft targets plus normalised [CLS] states of intermediate teacher layers (skip / last)."""

    config_cls = PKDConfig
    cfg: PKDConfig
    test_config = MethodTestConfig(sections={"method": {"init_from": "teacher"}})

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
        if teacher is None:
            raise ConfigError("pkd needs teacher.path (a fine-tuned classifier)")
        if self.cfg.init_from == "pretrained":
            base = from_pretrained(
                type(teacher), str(self.cfg.pretrained_path), num_labels=self.task.num_labels
            )
            k = _depth(self.run.student.num_layers, self.run.student.layers)
            if not k:
                raise ConfigError("pkd: set student.num_layers")
            student = copy_layers(base, list(range(k)))
            for key in ("id2label", "label2id", "problem_type"):
                setattr(student.config, key, getattr(teacher.config, key))
            info: dict[str, Any] = {
                "init": "pretrained",
                "path": self.cfg.pretrained_path,
                "layers": list(range(k)),
            }
        else:
            student, info = build_student(self.run.student, teacher, self.task)  # type: ignore[arg-type]
        n_t, n_s = num_layers(teacher), num_layers(student)
        layers = self.cfg.teacher_layers or pkd_teacher_layers(n_t, n_s, self.cfg.strategy)
        if len(layers) != n_s - 1 or not all(1 <= t <= n_t for t in layers):
            raise ConfigError(
                f"pkd teacher layers {layers} must be {n_s - 1} 1-based layer numbers of a {n_t}-layer teacher"
            )
        w_s, w_t = student.config.hidden_size, getattr(teacher, "config").hidden_size  # noqa: B009
        proj = nn.Linear(w_s, w_t) if w_s != w_t else None
        info = {**info, "patient_map": {f"student {j + 1}": f"teacher {t}" for j, t in enumerate(layers)}}
        return BuiltStudent(PKDStudent(student, proj, layers), info)

    @classmethod
    def control_student(cls, recipe: dict[str, Any]) -> dict[str, Any]:
        """With ``init_from: pretrained`` the student is the first k layers of ``pretrained_path`` (embeddings
        included, a new head): plain fine-tuning builds the same from ``student.init: pretrained`` with k
        layers. Without this the control would copy the *teacher's* layers, another init."""
        student = super().control_student(recipe)
        method = recipe.get("method") or {}
        if method.get("init_from", PKDConfig.init_from) != "pretrained":
            return student
        k = _depth(student.get("num_layers"), student.get("layers"))
        if not k or not method.get("pretrained_path"):
            return student  # the run itself stops on this with a clear error
        return {
            **student,
            "init": "pretrained",
            "path": method["pretrained_path"],
            "num_layers": k,
            "layers": None,
        }

    def export_model(self, bundle: nn.Module, stage: Stage | None = None) -> Any:
        return bundle.model

    def teacher_needs(self, stage: Stage, bundle: nn.Module) -> Needs:
        layers = tuple(bundle.teacher_layers)  # type: ignore[arg-type]
        return Needs(logits=True, hidden_states=True, hidden_layers=layers, cls_only=True)

    def loss(
        self, stage: Stage, batch: Batch, student_out: Any, teacher_out: Features | None, bundle: nn.Module
    ) -> dict[str, Tensor]:
        assert teacher_out is not None and teacher_out.logits is not None
        terms = hinton_terms(
            student_out.logits,
            teacher_out.logits,
            batch.get("labels"),
            self.cfg.alpha,
            self.cfg.temperature,
            self.task.regression,
        )
        if self.cfg.beta > 0:
            layers: list[int] = bundle.teacher_layers  # type: ignore[assignment]
            t_cls = torch.stack([teacher_out.hidden_states[t][:, 0] for t in layers], dim=1)
            terms["patient"] = self.cfg.beta * patient_loss(student_out.cls, t_cls)
        return terms
