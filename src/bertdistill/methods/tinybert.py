"""TinyBERT — Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language Understanding".

Transformer distillation in up to three stages (``method.stages``, any ordered subset):

* ``general`` — a raw-text corpus (``method.corpus`` files, one sentence per line, or an HF dataset column,
  read through the shared token store of :mod:`bertdistill.data.corpus`: one sequence per line, or with
  ``method.pack`` lines packed into full ``data.max_length`` sequences), the *pre-trained* teacher
  (``method.general_teacher``), intermediate losses only;
* ``task_intermediate`` — the task's (optionally augmented, ``method.train_data``) training text, the
  *fine-tuned* teacher (``teacher.path``), intermediate losses only (official: constant lr, no warm-up);
* ``task_prediction`` — the same data, prediction loss only (linear schedule, 10% warm-up).

Intermediate losses, per mapped layer and summed (eqs. 7–9 of the paper), with the uniform map
``g(m) = m·N/M`` (:func:`~bertdistill.layer_map.tinybert_layer_maps`):

* embeddings ``L_emb = MSE(E_S·W, E_T)`` (student ``hidden_states[0]`` ↔ teacher ``hidden_states[0]``);
* hidden ``L_hid = Σ_m MSE(H_S^m·W, H_T^{g(m)})``, W the learned projection ``fit_dense`` — **one shared**
  Linear for the embeddings and every layer as in the official code (``projection: shared``), or one per
  mapped layer (``projection: per_layer``);
* attention ``L_att = Σ_i (1/h)·Σ_heads MSE(A_S^i, A_T^{g(i+1)−1})`` on the **pre-softmax** scaled scores
  with the additive mask applied, values ≤ −100 (the masked keys) set to 0 in both, as the official code
  (``attention_loss: mse_scores``); ``mse_probs`` / ``kl_probs`` compare post-softmax maps instead. A
  student with fewer heads than the teacher learns group averages of the teacher's heads.

Prediction loss: ``L_pred = mean_{examples, classes}(−softmax(z_T/t)·log_softmax(z_S/t))`` (official soft
cross-entropy, t = 1, no t²); regression tasks: ``MSE(z_S, z_T)``. It needs no gold labels, so augmented
(unlabelled) training files are labelled by the teacher only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers.utils import ModelOutput

from ..config import ConfigError, MethodConfig, RunConfig
from ..data.corpus import CorpusDataset, CorpusSourceConfig, build_token_store, default_store_root
from ..data.loading import (
    extra_training_rows,
    run_eval_examples,
    run_train_examples,
    subsample,
    tokenize,
)
from ..data.tasks import TaskSpec
from ..features import SCORES_ATTENTION, check_layer_outputs, register_score_attention, use_score_attention
from ..hub import from_pretrained
from ..layer_map import tinybert_layer_maps
from ..losses import (
    attention_kl,
    attention_prob_mse,
    attention_score_mse,
    average_heads,
    masked_mse,
    regression_mse,
    soft_cross_entropy,
)
from ..protocol import Batch, BuiltStudent, Features, Method, MethodTestConfig, Needs, ParamGroups, Stage
from ..registry import register
from ..students import build_student, num_layers

log = logging.getLogger(__name__)

STAGES = ("general", "task_intermediate", "task_prediction")
EXTRAS_FILE = "extras.safetensors"
ATTENTION_LOSSES = {
    "mse_scores": attention_score_mse,
    "mse_probs": attention_prob_mse,
    "kl_probs": attention_kl,
}


OFFICIAL_TASK_LRS = (5e-5, 3e-5)
"""The official ``task_distill.py`` learning rates of the intermediate and the prediction stage (from a General
TinyBERT)."""
RANDOM_INIT_TASK_LR = 1e-4
"""Both task stages' learning rate for a student that starts from random weights (the general stage's rate)."""


def task_lrs(
    intermediate_lr: float | None, prediction_lr: float | None, random_start: bool
) -> tuple[float, float]:
    """The learning rates of ``task_intermediate`` and ``task_prediction``: ``intermediate_lr`` and
    ``prediction_lr`` where set; unset, the official 5e-5 and 3e-5 when the student starts trained (a General
    TinyBERT: ``student.init`` other than ``random``, or a ``general`` stage earlier in the run), and 1e-4 for both
    when it starts random (``random_start``). The official rates assume a general-distilled student; from random
    weights they barely move it off the class prior in the task stages' steps (``docs/methods/tinybert.md``,
    "Defaults and the evidence": 13-18 points below the same student without distillation on a 2,000-example
    SST-2 slice)."""
    auto = (RANDOM_INIT_TASK_LR, RANDOM_INIT_TASK_LR) if random_start else OFFICIAL_TASK_LRS
    return (
        intermediate_lr if intermediate_lr is not None else auto[0],
        prediction_lr if prediction_lr is not None else auto[1],
    )


@dataclass
class TinyBERTConfig(CorpusSourceConfig, MethodConfig):
    """TinyBERT's options; the ``general`` stage's corpus options (``corpus``, ``hf_dataset``, ``hf_config``,
    ``hf_split``, ``hf_column``, ``hf_data_files``, ``pack``, ``min_tokens``, ``store_dir``) are those of every
    raw-text method (:class:`~bertdistill.data.corpus.CorpusSourceConfig`)."""

    name: str = "tinybert"
    stages: list[str] = field(default_factory=lambda: ["task_intermediate", "task_prediction"])
    """Ordered subset of ``general``, ``task_intermediate``, ``task_prediction``."""
    general_teacher: str | None = None
    """Pre-trained teacher of the ``general`` stage (loaded with ``AutoModel``); unset = ``teacher.path``."""
    corpus_max_lines: int | None = None
    """At most this many sequences of the ``general`` stage's corpus: the *first* N in corpus order (files in
    order, then the HF dataset), not a seeded sample; unset = all. With the default one sequence per line these
    are the first N lines (a line longer than ``data.max_length`` counts once per piece); with ``pack``, N full
    sequences. The whole corpus is tokenised (once, cached) either way."""
    train_data: str | None = None
    """Training file of the task stages instead of the task's train split: e.g. the output of
    ``bertdistill augment`` (TSV/JSONL; gold labels, if any, are ignored by the losses)."""
    projection: str = "shared"
    """``shared``: one ``fit_dense`` for embeddings and all layers (official); ``per_layer``: one each."""
    attention_loss: str = "mse_scores"
    """``mse_scores`` (paper/official: pre-softmax) | ``mse_probs`` | ``kl_probs`` (post-softmax)."""
    embedding_weight: float = 1.0
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    temperature: float = 1.0
    hidden_map: list[list[int]] = field(default_factory=list)
    """``[[student, teacher], ...]`` hidden-state indices (0 = embeddings); empty = uniform g(m) = m·N/M."""
    attention_map: list[list[int]] = field(default_factory=list)
    """``[[student, teacher], ...]`` 0-based layer numbers; empty = uniform (student i ↔ teacher g(i+1)−1)."""
    general_lr: float = 1e-4
    general_epochs: float = 3.0
    general_steps: int | None = None
    intermediate_lr: float | None = None
    """Learning rate of ``task_intermediate``; unset = :meth:`TinyBERT.task_lrs`: the official 5e-5 for a student
    that starts trained, 1e-4 for a random-init one."""
    intermediate_epochs: float = 10.0
    intermediate_steps: int | None = None
    prediction_lr: float | None = None
    """Learning rate of ``task_prediction``; unset = the official 3e-5 for a student that starts trained, 1e-4 for
    a random-init one (see ``intermediate_lr``)."""
    prediction_epochs: float = 3.0
    prediction_steps: int | None = None
    cache_intermediate: bool = False
    """Cache the teacher's hidden states *and attention scores* for ``task_intermediate`` (L×H×T² floats per
    example: ~8 GB for SST-2's 67k sentences with a 4-layer map — size warning logged). Off by default:
    the teacher runs live; the prediction stage (logits only) is always cacheable."""
    init_extras: str | None = None
    """A stage output dir (``<run>/stages/general``) whose ``extras.safetensors`` initialises the
    projections — to go on from a general stage run in another process."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError(f"method.stages is empty; give an ordered subset of {list(STAGES)}")
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ConfigError(f"method.stages: unknown stage(s) {bad}; valid: {list(STAGES)}")
        if len(set(self.stages)) != len(self.stages) or self.stages != sorted(self.stages, key=STAGES.index):
            raise ConfigError(
                f"method.stages must be in the order {list(STAGES)} without repeats, got {self.stages}"
            )
        self.check_source("the tinybert general stage" if "general" in self.stages else None)
        if self.corpus_max_lines is not None and self.corpus_max_lines < 1:
            raise ConfigError(
                f"method.corpus_max_lines must be >= 1 (or unset = the whole corpus), got {self.corpus_max_lines}"
            )
        if self.projection not in ("shared", "per_layer"):
            raise ConfigError(f"method.projection must be shared or per_layer, got {self.projection!r}")
        if self.attention_loss not in ATTENTION_LOSSES:
            raise ConfigError(
                f"method.attention_loss must be one of {sorted(ATTENTION_LOSSES)}, got {self.attention_loss!r}"
            )
        if self.temperature <= 0:
            raise ConfigError(f"method.temperature must be > 0, got {self.temperature}")
        for k in ("embedding_weight", "hidden_weight", "attention_weight"):
            if getattr(self, k) < 0:
                raise ConfigError(f"method.{k} must be >= 0, got {getattr(self, k)}")
        for k in ("hidden_map", "attention_map"):
            if any(len(p) != 2 for p in getattr(self, k)):
                raise ConfigError(f"method.{k} must be a list of [student, teacher] pairs")
        for k in ("general", "intermediate", "prediction"):
            lr = getattr(self, f"{k}_lr")
            if (lr is not None and lr <= 0) or getattr(self, f"{k}_epochs") <= 0:
                raise ConfigError(
                    f"method.{k}_lr and method.{k}_epochs must be > 0 (an unset task lr: automatic)"
                )
            steps = getattr(self, f"{k}_steps")
            if steps is not None and steps < 1:
                raise ConfigError(f"method.{k}_steps must be >= 1 (or unset), got {steps}")


# ----------------------------------------------------------------------------------------------- student bundle


@dataclass
class TinyBERTOutput(ModelOutput):
    logits: Tensor | None = None
    hidden: dict[int, Tensor] | None = None
    """Student hidden-state index → state projected to the teacher's width ``[B, T, H_T]``."""
    attentions: dict[int, Tensor] | None = None
    """Student layer → pre-softmax scores ``[B, heads, T, T]`` (additive mask included)."""


class TinyBERTStudent(nn.Module):
    """The HF student plus the projections ``fit_dense`` (student width → teacher width), and the layer maps
    (``hidden_map``: student → teacher ``hidden_states`` index; ``attention_map``: 0-based layers)."""

    def __init__(
        self,
        model: nn.Module,
        teacher_width: int,
        hidden_map: list[tuple[int, int]],
        attention_map: list[tuple[int, int]],
        shared: bool,
    ) -> None:
        super().__init__()
        self.model = model
        width = int(getattr(model, "config").hidden_size)  # noqa: B009
        self.hidden_map = list(hidden_map)
        self.attention_map = list(attention_map)
        self.hidden_indices = [s for s, _ in hidden_map]
        self.attention_layers = [s for s, _ in attention_map]
        self.student_heads = int(getattr(model, "config").num_attention_heads)  # noqa: B009
        self.shared = shared
        n = 1 if shared else len(self.hidden_indices)
        self.fit_dense = nn.ModuleList([nn.Linear(width, teacher_width) for _ in range(n)])

    def project(self, index: int, h: Tensor) -> Tensor:
        return self.fit_dense[0 if self.shared else self.hidden_indices.index(index)](h)

    def forward(self, features: bool = False, **inputs: Any) -> TinyBERTOutput:
        if not features:
            return TinyBERTOutput(logits=self.model(**inputs).logits)
        out = self.model(**inputs, output_hidden_states=True, output_attentions=True)
        check_layer_outputs(self.model, out)
        hidden = {i: self.project(i, out.hidden_states[i]) for i in self.hidden_indices}
        att = {i: out.attentions[i] for i in self.attention_layers}
        return TinyBERTOutput(logits=out.logits, hidden=hidden, attentions=att)


@register("tinybert")
class TinyBERT(Method):
    """TinyBERT: embedding + hidden (projected) + pre-softmax attention MSE, then soft cross-entropy."""

    config_cls = TinyBERTConfig
    cfg: TinyBERTConfig
    test_config = MethodTestConfig(
        # the paper's per-stage learning rates are too small for a few toy steps
        sections={"method": {"intermediate_lr": 1e-3, "prediction_lr": 1e-3}},
        # one stage, so that the logged losses are one objective's
        overfit={"method": {"stages": ["task_intermediate"], "intermediate_lr": 3e-3}},
    )

    def needs_attentions(self) -> bool:
        return True

    # ------------------------------------------------------------------ teacher / student
    def load_teacher_model(self, path: str, stage: Stage | None = None) -> nn.Module:
        """Fine-tuned teachers as sequence classifiers, the general stage's pre-trained teacher with
        ``AutoModel``; both return pre-softmax scores as ``attentions``."""
        from transformers import AutoModel, AutoModelForSequenceClassification

        cls = (
            AutoModel
            if (stage is not None and stage.name == "general")
            else AutoModelForSequenceClassification
        )
        model = from_pretrained(
            cls,
            path,
            mark_untrained=True,
            trust_remote_code=self.run.teacher.trust_remote_code,
            attn_implementation=register_score_attention(),
        )
        if stage is not None and self.run.teacher.path and path != self.run.teacher.path:
            from transformers import AutoConfig

            ref, c = from_pretrained(AutoConfig, self.run.teacher.path), model.config
            shape = (
                int(c.num_hidden_layers),
                int(c.hidden_size),
                int(c.num_attention_heads),
                int(c.vocab_size),
            )
            want = (
                int(ref.num_hidden_layers),
                int(ref.hidden_size),
                int(ref.num_attention_heads),
                int(ref.vocab_size),
            )
            if shape != want:
                raise ConfigError(
                    f"teacher {path!r} of stage {stage.name!r} has (layers, width, heads, vocab) {shape}, but the "
                    f"student's maps, projections and tokenizer are those of {want} (teacher.path); "
                    "use teachers of one shape and vocabulary"
                )
        return model

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
        cfg = self.cfg
        if teacher is None:
            if not cfg.general_teacher:
                raise ConfigError("tinybert needs teacher.path (or method.general_teacher)")
            teacher = self.load_teacher_model(cfg.general_teacher, None)
        student, info = build_student(self.run.student, teacher, self.task, attn_implementation="eager")  # type: ignore[arg-type]
        use_score_attention(student)
        t_cfg: Any = teacher.config
        n_t, n_s = num_layers(teacher), num_layers(student)
        h_t, h_s = int(t_cfg.num_attention_heads), int(student.config.num_attention_heads)
        if h_s > h_t or h_t % h_s:
            raise ConfigError(
                f"the student has {h_s} attention heads, the teacher {h_t}: the attention loss needs equal "
                "counts or a student count that divides the teacher's (teacher heads are averaged in groups)"
            )
        try:
            u_hidden, u_att = tinybert_layer_maps(n_t, n_s)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        hidden_map = [(int(s), int(t)) for s, t in cfg.hidden_map] or u_hidden
        attention_map = [(int(s), int(t)) for s, t in cfg.attention_map] or u_att
        for s, t in hidden_map:
            if not (0 <= s <= n_s and 0 <= t <= n_t):
                raise ConfigError(
                    f"method.hidden_map pair {[s, t]}: hidden-state indices must be in 0..{n_s} (student) and "
                    f"0..{n_t} (teacher); 0 = embeddings"
                )
        for s, t in attention_map:
            if not (0 <= s < n_s and 0 <= t < n_t):
                raise ConfigError(
                    f"method.attention_map pair {[s, t]}: layer numbers must be in 0..{n_s - 1} (student) and "
                    f"0..{n_t - 1} (teacher)"
                )
        maps = {"hidden": [list(p) for p in hidden_map], "attention": [list(p) for p in attention_map]}
        student.config.bertdistill_layer_map = maps  # saved in every exported config.json
        bundle = TinyBERTStudent(
            student, int(t_cfg.hidden_size), hidden_map, attention_map, shared=cfg.projection == "shared"
        )
        if cfg.init_extras:
            self._load_extras(bundle, Path(cfg.init_extras).expanduser())
        if cfg.cache_intermediate and "task_intermediate" in cfg.stages and "train" in datasets:
            self._warn_cache_size(datasets["train"], len(attention_map), h_t)
        info = {
            **info,
            "layers": f"{n_s} of {n_t}",
            "heads": f"{h_s} (teacher {h_t}{', averaged in groups' if h_s != h_t else ''})",
            "hidden_map (student→teacher hidden_states)": dict(hidden_map),
            "attention_map (student→teacher layer, 0-based)": dict(attention_map),
            "projection": f"{cfg.projection} {student.config.hidden_size}→{t_cfg.hidden_size}",
            "stages": cfg.stages,
        }
        return BuiltStudent(bundle, info)

    def export_model(self, bundle: nn.Module, stage: Stage | None = None) -> Any:
        return bundle.model

    def export_extras(self, bundle: nn.Module) -> dict[str, Tensor]:
        """The projections (``fit_dense.<i>.weight/bias``), to resume them with ``method.init_extras``."""
        return {f"fit_dense.{k}": v for k, v in bundle.fit_dense.state_dict().items()}  # type: ignore[union-attr]

    def _load_extras(self, bundle: TinyBERTStudent, where: Path) -> None:
        from safetensors.torch import load_file

        file = where / EXTRAS_FILE if where.is_dir() else where
        if not file.is_file():
            raise ConfigError(f"method.init_extras: {str(file)!r} not found (a stage dir of an earlier run)")
        state = {
            k[len("fit_dense.") :]: v for k, v in load_file(str(file)).items() if k.startswith("fit_dense.")
        }
        try:
            bundle.fit_dense.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ConfigError(
                f"method.init_extras {str(file)!r} does not fit this student's projections "
                f"(projection: {self.cfg.projection}, same student and teacher widths?): {str(e).splitlines()[0]}"
            ) from None

    def __init__(self, run: RunConfig, task: TaskSpec) -> None:
        super().__init__(run, task)
        cfg = self.cfg
        # no trained weights to start the task stages from: neither a trained student nor a general stage first
        self.random_start = run.student.init == "random" and "general" not in cfg.stages
        low = {
            f"method.{k}_lr": v
            for k in ("intermediate", "prediction")
            if (v := getattr(cfg, f"{k}_lr")) is not None and v < RANDOM_INIT_TASK_LR
        }
        if self.random_start and low and "task_prediction" in cfg.stages:
            log.warning(
                "%s with a random-init student (student.init: random, no general stage): the official task "
                "rates assume a General TinyBERT; from random weights they have left students at the majority "
                "class (docs/methods/tinybert.md, 'Defaults and the evidence'); unset them for %g",
                ", ".join(f"{k}={v:g}" for k, v in low.items()),
                RANDOM_INIT_TASK_LR,
            )

    # ------------------------------------------------------------------ stages / data
    def task_lrs(self) -> tuple[float, float]:
        """The learning rates of ``task_intermediate`` and ``task_prediction``: :func:`task_lrs` of this run."""
        return task_lrs(self.cfg.intermediate_lr, self.cfg.prediction_lr, self.random_start)

    @classmethod
    def control_recipe(cls, recipe: dict[str, Any], steps: int) -> dict[str, Any] | None:
        """The default control (the same student fine-tuned for the same steps), at the learning rate this run
        trains the classifier with (``task_prediction``'s) rather than ``train.lr``: for the random-init student,
        1e-4, so that the control is not held back by a rate too small for random weights."""
        method = recipe.get("method") or {}
        # the control has no general stage: a random-init control student starts random whatever the run does
        random_start = (recipe.get("student") or {}).get("init", "teacher") == "random"
        _, lr = task_lrs(method.get("intermediate_lr"), method.get("prediction_lr"), random_start)
        control = super().control_recipe(recipe, steps)
        if control is not None:
            control.setdefault("train", {})["lr"] = lr
        return control

    def stages(self) -> list[Stage]:
        cfg = self.cfg
        intermediate_lr, prediction_lr = self.task_lrs()
        out = []
        for name in cfg.stages:
            if name == "general":
                out.append(
                    Stage(
                        "general",
                        data="corpus",
                        epochs=cfg.general_epochs,
                        max_steps=cfg.general_steps,
                        lr=cfg.general_lr,
                        scheduler="linear",
                        warmup_ratio=0.1,
                        param_groups=_intermediate_params,
                        evaluate=False,
                        cacheable=False,
                        teacher=cfg.general_teacher,
                    )
                )
            elif name == "task_intermediate":
                out.append(
                    Stage(
                        "task_intermediate",
                        epochs=cfg.intermediate_epochs,
                        max_steps=cfg.intermediate_steps,
                        lr=intermediate_lr,
                        scheduler="constant",
                        warmup_ratio=0.0,
                        param_groups=_intermediate_params,
                        evaluate=False,
                        cacheable=cfg.cache_intermediate,
                    )
                )
            else:
                out.append(
                    Stage(
                        "task_prediction",
                        epochs=cfg.prediction_epochs,
                        max_steps=cfg.prediction_steps,
                        lr=prediction_lr,
                        scheduler="linear",
                        warmup_ratio=0.1,
                        param_groups=_student_only,
                    )
                )
        return out

    def teacher_needs(self, stage: Stage, bundle: nn.Module) -> Needs:
        if stage.name == "task_prediction":
            return Needs(logits=True)
        b: TinyBERTStudent = bundle  # type: ignore[assignment]
        hidden = self.cfg.embedding_weight > 0 or self.cfg.hidden_weight > 0
        return Needs(
            logits=False,
            hidden_states=hidden,
            attentions=self.cfg.attention_weight > 0,
            hidden_layers=tuple(sorted({t for _, t in b.hidden_map})),
            attention_layers=tuple(sorted({t for _, t in b.attention_map})),
        )

    def datasets(self, tokenizer: Any) -> dict[str, Dataset]:
        cfg, d, seed = self.cfg, self.run.data, self.run.train.seed
        out: dict[str, Dataset] = {}
        if any(s != "general" for s in cfg.stages):
            if (
                cfg.train_data
            ):  # augmented text: never evaluation text, nor a variant of a selection-slice sentence
                train = extra_training_rows(cfg.train_data, d, self.task, "method.train_data")
            else:
                train = run_train_examples(d, self.task)
            ds = tokenize(subsample(train, d.max_train_examples, seed), tokenizer, d.max_length)
            if cfg.train_data:
                ds.labels = None  # augmented text: the teacher labels it, gold labels are never copied
            out["train"] = ds
        if "general" in cfg.stages:
            out["corpus"] = self._general_corpus(tokenizer)
        ev = run_eval_examples(d, self.task)
        if ev is not None and ev.labels is not None:
            out["eval"] = tokenize(subsample(ev, d.max_eval_examples, seed), tokenizer, d.max_length)
        return out

    def _general_corpus(self, tokenizer: Any) -> CorpusDataset:
        """The ``general`` stage's sequences from the shared token store (tokenised once, streaming, cached),
        capped at the first ``corpus_max_lines``. Unmasked; items carry all-zero ``token_type_ids`` when the
        tokenizer returns them, so the batches are those of tokenised single sentences."""
        cfg = self.cfg
        root = default_store_root(cfg, self.run.teacher.cache_dir)
        store = build_token_store(cfg, tokenizer, self.run.data.max_length, root)
        n = len(store) if cfg.corpus_max_lines is None else min(len(store), cfg.corpus_max_lines)
        segments = "token_type_ids" in tokenizer.model_input_names
        return CorpusDataset(store, np.arange(n), token_type_ids=segments)

    @staticmethod
    def _warn_cache_size(ds: Any, n_att: int, heads: int) -> None:
        gb = sum(n_att * heads * k * k * 4 for k in ds.lengths) / 1e9
        log.warning(
            "method.cache_intermediate: the teacher's attention scores need ≈ %.1f GB on disk for %d examples",
            gb,
            len(ds),
        )

    # ------------------------------------------------------------------ training step
    def student_inputs(self, batch: Batch, stage: Stage) -> dict[str, Any]:
        return {**batch["inputs"], "features": stage.name != "task_prediction"}

    def loss(
        self, stage: Stage, batch: Batch, student_out: Any, teacher_out: Features | None, bundle: nn.Module
    ) -> dict[str, Tensor]:
        assert teacher_out is not None
        cfg = self.cfg
        b: TinyBERTStudent = bundle  # type: ignore[assignment]
        if stage.name == "task_prediction":
            assert teacher_out.logits is not None
            if self.task.regression:
                return {"pred": regression_mse(student_out.logits, teacher_out.logits)}
            return {"pred": soft_cross_entropy(student_out.logits, teacher_out.logits, cfg.temperature)}
        mask = batch["inputs"]["attention_mask"]
        terms: dict[str, Tensor] = {}
        emb = [(s, t) for s, t in b.hidden_map if s == 0]
        hid = [(s, t) for s, t in b.hidden_map if s != 0]
        if cfg.embedding_weight > 0 and emb:
            terms["emb"] = cfg.embedding_weight * _sum(
                masked_mse(student_out.hidden[s], teacher_out.hidden_states[t], mask) for s, t in emb
            )
        if cfg.hidden_weight > 0 and hid:
            terms["hidden"] = cfg.hidden_weight * _sum(
                masked_mse(student_out.hidden[s], teacher_out.hidden_states[t], mask) for s, t in hid
            )
        if cfg.attention_weight > 0 and b.attention_map:
            fn = ATTENTION_LOSSES[cfg.attention_loss]
            terms["att"] = cfg.attention_weight * _sum(
                fn(
                    student_out.attentions[s],
                    average_heads(
                        teacher_out.attentions[t].to(student_out.attentions[s].dtype), b.student_heads
                    ),
                    mask,
                )
                for s, t in b.attention_map
            )
        if not terms:
            raise ConfigError("tinybert: every intermediate loss weight is 0; nothing to train")
        return terms


def _sum(values: Any) -> Tensor:
    out: Tensor | None = None
    for v in values:
        out = v if out is None else out + v
    assert out is not None
    return out


def _intermediate_params(bundle: nn.Module) -> ParamGroups:
    """Intermediate stages: the encoder (embeddings, layers) and the projections. The pooler and the task head
    get no gradient from these losses; leaving them out changes nothing numerically (AdamW skips parameters
    without gradients) but tells DDP not to wait for their gradients."""
    inner: Any = bundle
    base_prefix = inner.model.base_model_prefix
    params = [
        (f"model.{n}", p)
        for n, p in inner.model.named_parameters()
        if n.startswith(f"{base_prefix}.") and ".pooler." not in n
    ]
    params += [(f"fit_dense.{n}", p) for n, p in inner.fit_dense.named_parameters()]
    return [{"params": params}]


def _student_only(bundle: nn.Module) -> ParamGroups:
    """The prediction stage trains the student proper; the projections (no gradient there) stay frozen."""
    inner: Any = bundle
    return [{"params": [(f"model.{n}", p) for n, p in inner.model.named_parameters()]}]


__all__ = [
    "SCORES_ATTENTION",
    "TinyBERT",
    "TinyBERTConfig",
    "TinyBERTOutput",
    "TinyBERTStudent",
    "register_score_attention",
    "use_score_attention",
]
