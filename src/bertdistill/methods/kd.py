"""Hinton KD — Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

``L = α·t²·KL(softmax(z_T/t) ‖ softmax(z_S/t)) + (1−α)·CE(z_S, y)``; for a regression task the soft term is
``MSE(z_S, z_T)`` and the hard term ``MSE(z_S, y)`` (no temperature on a regression output). An optional
hidden-state MSE on mapped layers (``hidden_weight`` > 0; off by default) adds FitNets-style intermediate
matching between students and teachers of the same width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import ConfigError, MethodConfig
from ..layer_map import uniform_hidden_map
from ..losses import hinton_terms, masked_mse
from ..protocol import Batch, BuiltStudent, Features, Method, MethodTestConfig, Needs, Stage
from ..registry import register
from ..students import build_student, num_layers


@dataclass
class KDConfig(MethodConfig):
    name: str = "kd"
    alpha: float = 0.2
    """Weight of the soft (teacher) term; 1 − alpha weighs the gold-label term. 0.2 with ``temperature`` 1 (the
    defaults) keeps the gold label the argmax of every example's target; measured within seed noise of the control
    even under a teacher weaker than the student alone (docs/methods/kd.md, "Defaults and the evidence"). Hinton et
    al.'s 0.5 / 4 gains more from a teacher clearly stronger than the student alone."""
    temperature: float = 1.0
    hidden_weight: float = 0.0
    """Weight of the optional hidden-state MSE (0 = plain Hinton KD)."""
    hidden_map: list[list[int]] = field(default_factory=list)
    """``[[student_index, teacher_index], ...]`` in ``hidden_states`` indexing (0 = embeddings);
    empty = uniform map over layers 1..M when ``hidden_weight`` > 0."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"method.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ConfigError(f"method.temperature must be > 0, got {self.temperature}")
        if any(len(p) != 2 for p in self.hidden_map):
            raise ConfigError("method.hidden_map must be a list of [student_index, teacher_index] pairs")


@register("kd")
class KD(Method):
    """Hinton KD: temperature-softened teacher probabilities (×t²) plus gold labels."""

    config_cls = KDConfig
    cfg: KDConfig
    # a random teacher and the gold labels disagree: the overfit check drives the teacher term alone
    test_config = MethodTestConfig(overfit={"method": {"alpha": 1.0, "temperature": 1.0}})

    def teacher_needs(self, stage: Stage, bundle: nn.Module) -> Needs:
        if self.cfg.hidden_weight > 0:
            return Needs(
                logits=True, hidden_states=True, hidden_layers=tuple(t for _, t in hidden_map(bundle))
            )
        return Needs(logits=True)

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
        student, info = build_student(self.run.student, teacher, self.task)  # type: ignore[arg-type]
        if self.cfg.hidden_weight > 0:
            if teacher is None:
                raise ConfigError("method.hidden_weight > 0 needs a teacher")
            w_s, w_t = getattr(student, "config").hidden_size, getattr(teacher, "config").hidden_size  # noqa: B009
            if w_s != w_t:
                raise ConfigError(
                    f"kd's hidden MSE needs student and teacher of the same width ({w_s} vs {w_t}); "
                    "use tinybert for projections"
                )
            n_t, n_s = num_layers(teacher), num_layers(student)
            pairs = [(int(s), int(t)) for s, t in self.cfg.hidden_map] or uniform_hidden_map(
                n_t, n_s, include_embeddings=False
            )
            bad = [[s, t] for s, t in pairs if not (0 <= s <= n_s and 0 <= t <= n_t)]
            if bad:
                raise ConfigError(
                    f"method.hidden_map {bad}: a pair is [student, teacher] hidden-state indices, 0 (embeddings) to "
                    f"{n_s} for the student and {n_t} for the teacher"
                )
            # saved with the student's config.json: which teacher layer each student layer learnt
            student.config.bertdistill_hidden_map = [list(p) for p in pairs]
            info["hidden_map"] = pairs
        return BuiltStudent(student, info)

    def student_inputs(self, batch: Batch, stage: Stage) -> dict[str, Any]:
        return {**batch["inputs"], "output_hidden_states": self.cfg.hidden_weight > 0}

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
        if self.cfg.hidden_weight > 0:
            mask = batch["inputs"]["attention_mask"]
            hs = student_out.hidden_states
            mse = sum(masked_mse(hs[s], teacher_out.hidden_states[t], mask) for s, t in hidden_map(bundle))
            terms["hidden"] = self.cfg.hidden_weight * mse  # type: ignore[assignment]
        return terms


def hidden_map(bundle: nn.Module) -> list[tuple[int, int]]:
    """The (student, teacher) ``hidden_states`` pairs recorded on the student's config by ``build_student``."""
    return [(int(s), int(t)) for s, t in getattr(bundle.config, "bertdistill_hidden_map", [])]
