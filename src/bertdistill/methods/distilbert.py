"""DistilBERT — Sanh, Debut, Chaumond & Wolf 2019, "DistilBERT, a distilled version of BERT: smaller, faster,
cheaper and lighter".

Task-agnostic distillation during *pre-training*, on raw text. From a BERT teacher the student is HF
``DistilBertForMaskedLM``: the teacher's width, half its layers (configurable), no token-type embeddings, no
pooler. From a masked LM of another family (RoBERTa, ELECTRA's generator, DeBERTa-v2, DistilBERT, ...) it is
that family's masked LM with fewer layers, as DistilRoBERTa was made from RoBERTa. It starts from the
teacher's embeddings and an evenly spread selection of its layers that includes the first and the last one
(12 → 6: the official ``[0, 2, 4, 7, 9, 11]``), and from the teacher's MLM head. The loss, on batches masked
dynamically (15%, 80/10/10, positions drawn ∝ count^−0.7):

    L = α_ce · t² · KL(softmax(z_T/t) ‖ softmax(z_S/t))     over all real tokens (option: masked only)
      + α_mlm · CE(z_S, x)                                  over the masked tokens
      + α_cos · (1 − cos(h_S, h_T))                         over all real tokens, last hidden states

with (α_ce, α_mlm, α_cos) = (5, 2, 1) and t = 2 (the official README's command). The ``L_ce`` normalisation
follows the official code: ``KLDivLoss(batchmean)`` over the selected token rows, i.e. the mean over tokens.

The teacher must be a masked LM with a *trained* MLM head; encoders without one (e.g. the MiniLM-L6 sentence
encoder) are refused with the command that trains one (``bertdistill finetune --task mlm``).

The exported model is a masked-LM dir (``DistilBertForMaskedLM`` from a BERT teacher) that ``AutoModelForSequenceClassification`` and
``bertdistill finetune`` load directly. The paper's optional task-specific step (the student fine-tuned with
a fine-tuned teacher's soft targets plus gold labels) is the second stage ``task`` when ``task_teacher`` is set:
a classifier sharing the distilled body, trained with Hinton KD from that stage's own teacher on ``data.task``
(the run then exports the classifier; ``stages/pretrain/`` keeps the masked LM) — or a separate ``kd`` run from
the distilled dir (``recipes/distilbert/sst2.yaml``).
Every difference from the paper and the official code is listed in ``docs/methods/distilbert.md``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForSequenceClassification,
    PreTrainedModel,
)
from transformers.activations import ACT2FN

from ..config import ConfigError, MethodConfig
from ..data.corpus import CorpusConfig, MLMCollator, corpus_datasets
from ..data.loading import Collator
from ..hub import from_pretrained
from ..layer_map import select_layers
from ..losses import hinton_terms, masked_cosine, masked_soft_target_kl, mlm_ce
from ..mlm_head import MLMRunner
from ..protocol import (
    Batch,
    BuiltStudent,
    Features,
    Method,
    MethodTestConfig,
    Needs,
    ParamGroups,
    Runner,
    Stage,
    takes_token_types,
)
from ..registry import register
from ..students import copy_layers

log = logging.getLogger(__name__)

# Loading a checkpoint into AutoModelForMaskedLM may report these as missing without anything being random.
_HARMLESS_MISSING = ("position_ids", "token_type_ids")


@dataclass
class DistilBertMethodConfig(CorpusConfig, MethodConfig):
    name: str = "distilbert"
    alpha_ce: float = 5.0
    """Weight of the soft-target (teacher distribution) term ``L_ce``."""
    alpha_mlm: float = 2.0
    """Weight of the masked-LM term ``L_mlm``."""
    alpha_cos: float = 1.0
    """Weight of the cosine term ``L_cos`` on the last hidden states."""
    temperature: float = 2.0
    restrict_ce_to_mask: bool = False
    """``L_ce`` over the masked tokens only (official ``--restrict_ce_to_mask``); default: all real tokens."""
    layer_selection: str = "uniform"
    """Teacher layers the student starts from: ``uniform`` (evenly spread, first and last included — the
    paper's rule), ``first`` or ``last``; ``student.layers`` overrides it, ``student.num_layers`` sets the
    depth (default: half the teacher's)."""
    fold_token_type: bool = True
    """Add the teacher's token-type-0 embedding to the student's position embeddings, so the initial student
    embeds a single-segment input exactly as the teacher does (the official extraction script drops it)."""
    freeze_position_embeddings: bool = True
    """Keep the student's position embeddings (the teacher's, copied at initialisation) frozen in the
    ``pretrain`` stage, as the official training config does (``sinusoidal_pos_embds: true`` makes them
    ``requires_grad = False`` before BERT's are loaded over them); ``false`` trains them."""
    pretrain_steps: int | None = None
    """Steps of the ``pretrain`` stage (default: ``train.max_steps``, else ``train.epochs`` over the corpus)."""
    task_teacher: str | None = None
    """A fine-tuned classifier: adds the optional second stage ``task`` — the distilled student, with a
    classification head, trained with Hinton KD from this teacher plus the gold labels of ``data.task``."""
    task_alpha: float = 0.5
    """``task`` stage: weight of the soft targets (1 − task_alpha on the gold labels)."""
    task_temperature: float = 2.0
    task_steps: int | None = None
    """Steps of the ``task`` stage (default: ``train.max_steps``, else ``task_epochs`` / ``train.epochs``)."""
    task_epochs: float | None = None
    task_lr: float | None = None
    """``task`` stage learning rate (default ``train.lr``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.task_alpha <= 1.0:
            raise ConfigError(f"method.task_alpha must be in [0, 1], got {self.task_alpha}")
        if self.task_temperature <= 0:
            raise ConfigError(f"method.task_temperature must be > 0, got {self.task_temperature}")
        for k in ("alpha_ce", "alpha_mlm", "alpha_cos"):
            if getattr(self, k) < 0:
                raise ConfigError(f"method.{k} must be >= 0, got {getattr(self, k)}")
        if self.alpha_ce + self.alpha_mlm + self.alpha_cos <= 0:
            raise ConfigError("method.alpha_ce + alpha_mlm + alpha_cos must be > 0 (paper: 5, 2, 1)")
        if self.temperature <= 0:
            raise ConfigError(f"method.temperature must be > 0, got {self.temperature}")
        if self.layer_selection not in ("uniform", "first", "last"):
            raise ConfigError(
                f"method.layer_selection must be uniform, first or last, got {self.layer_selection!r}"
            )


# ----------------------------------------------------------------------------------------------- teacher


def load_mlm_teacher(path: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """``AutoModelForMaskedLM`` from ``path``, refusing checkpoints whose MLM head would be random.

    Detection: ``output_loading_info=True`` lists the weights the checkpoint did not provide; any missing
    weight (other than buffers) means a freshly initialised head — e.g. a ``BertModel`` / sentence-encoder
    checkpoint without ``cls.predictions.*``."""
    model, info = from_pretrained(
        AutoModelForMaskedLM, path, trust_remote_code=trust_remote_code, output_loading_info=True
    )
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith(_HARMLESS_MISSING))
    if missing:
        raise ConfigError(
            f"teacher {path!r} has no trained masked-LM head (the checkpoint lacks {missing[:4]}"
            f"{' …' if len(missing) > 4 else ''}), so AutoModelForMaskedLM would give it random head weights. "
            f"Train the head first: `bertdistill finetune --task mlm --model {path} --corpus FILE -o DIR` "
            "(add --train-body to adapt the encoder too), then set teacher.path to DIR."
        )
    return model


# ----------------------------------------------------------------------------------------------- student


def distilbert_config(teacher_config: Any, n_layers: int) -> DistilBertConfig:
    """The DistilBERT student's config: the teacher's widths, vocabulary, positions and activation,
    ``n_layers`` layers, learned (not sinusoidal) position embeddings like BERT's."""
    tc = teacher_config
    if getattr(tc, "model_type", None) != "bert":
        raise ConfigError(
            f"a DistilBERT student is built from a BERT-architecture teacher (model_type 'bert'), got "
            f"{getattr(tc, 'model_type', None)!r}; a masked LM of another family gets a student of its own family "
            "(method.distilbert builds it)"
        )
    act = tc.hidden_act
    if not isinstance(act, str) or act not in ACT2FN:
        raise ConfigError(
            f"the teacher's activation {act!r} is not one DistilBERT can use ({sorted(ACT2FN)})"
        )
    if getattr(tc, "position_embedding_type", "absolute") != "absolute":
        raise ConfigError("distilbert needs a teacher with absolute position embeddings")
    if abs(getattr(tc, "layer_norm_eps", 1e-12) - 1e-12) > 1e-15:
        log.warning("DistilBERT's LayerNorm eps is fixed at 1e-12; the teacher uses %s", tc.layer_norm_eps)
    return DistilBertConfig(
        vocab_size=tc.vocab_size,
        max_position_embeddings=tc.max_position_embeddings,
        sinusoidal_pos_embds=False,
        n_layers=n_layers,
        n_heads=tc.num_attention_heads,
        dim=tc.hidden_size,
        hidden_dim=tc.intermediate_size,
        dropout=tc.hidden_dropout_prob,
        attention_dropout=tc.attention_probs_dropout_prob,
        # task heads drop out like the teacher's (BERT's classifier uses hidden_dropout_prob; HF DistilBERT: 0.2)
        seq_classif_dropout=getattr(tc, "classifier_dropout", None) or tc.hidden_dropout_prob,
        qa_dropout=tc.hidden_dropout_prob,
        activation=act,
        initializer_range=tc.initializer_range,
        pad_token_id=tc.pad_token_id if tc.pad_token_id is not None else 0,
        tie_word_embeddings=getattr(tc, "tie_word_embeddings", True),
    )


def student_config(teacher_config: Any, n_layers: int) -> Any:
    """The student's config: :func:`distilbert_config` from a BERT teacher (the paper's student); from a masked
    LM of another family, the teacher's own config with ``n_layers`` layers (DistilRoBERTa's recipe)."""
    if getattr(teacher_config, "model_type", None) == "bert":
        return distilbert_config(teacher_config, n_layers)
    cfg = copy.deepcopy(teacher_config)
    cfg.num_hidden_layers = n_layers
    return cfg


def _check_same_shape(student: Any, teacher: Any, path: str) -> None:
    """The cosine loss compares student and teacher hidden states and the soft-target loss their vocabulary
    logits, position by position, with no projection in between: a pre-trained student must match the
    teacher's width and vocabulary."""
    pairs = {
        "width": (student.hidden_size, teacher.hidden_size),
        "vocabulary": (student.vocab_size, teacher.vocab_size),
    }
    diffs = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if diffs:
        said = ", ".join(f"{k} {s} vs the teacher's {t}" for k, (s, t) in diffs.items())
        raise ConfigError(
            f"student {path!r} does not fit the teacher ({said}): distilbert's cosine and soft-target losses compare "
            "hidden states and vocabulary logits without a projection; use student.init: teacher or random (the "
            "teacher's widths)"
        )


def _copy(dst: Any, src: Any) -> None:
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)


@torch.no_grad()
def distilbert_from_teacher(
    teacher: PreTrainedModel, layers: list[int], fold_token_type: bool = True
) -> DistilBertForMaskedLM:
    """A ``DistilBertForMaskedLM`` initialised from a BERT masked LM (official ``extract_distilbert.py``):

    word / position embeddings + LayerNorm; student layer i ← teacher layer ``layers[i]`` (query/key/value/
    attention-output → q_lin/k_lin/v_lin/out_lin, attention LayerNorm → sa_layer_norm, intermediate/output
    dense → ffn.lin1/lin2, output LayerNorm → output_layer_norm); MLM head ``cls.predictions`` → vocab_transform,
    vocab_layer_norm, vocab_projector (weight and bias). Token-type embeddings have no place in DistilBERT:
    with ``fold_token_type`` the type-0 row is added to every position embedding (exact for single-segment
    input), else dropped as in the official script."""
    n_t = teacher.config.num_hidden_layers
    if not layers or any(not 0 <= i < n_t for i in layers):
        raise ConfigError(f"student layers {layers} are not valid 0-based layers of a {n_t}-layer teacher")
    student = DistilBertForMaskedLM(distilbert_config(teacher.config, len(layers)))
    t: Any = teacher.base_model
    s: Any = student.distilbert
    s.embeddings.word_embeddings.weight.copy_(t.embeddings.word_embeddings.weight)
    pos = t.embeddings.position_embeddings.weight
    if fold_token_type:
        pos = pos + t.embeddings.token_type_embeddings.weight[0]
    s.embeddings.position_embeddings.weight.copy_(pos)
    _copy(s.embeddings.LayerNorm, t.embeddings.LayerNorm)
    for i, j in enumerate(layers):
        tl, sl = t.encoder.layer[j], s.transformer.layer[i]
        _copy(sl.attention.q_lin, tl.attention.self.query)
        _copy(sl.attention.k_lin, tl.attention.self.key)
        _copy(sl.attention.v_lin, tl.attention.self.value)
        _copy(sl.attention.out_lin, tl.attention.output.dense)
        _copy(sl.sa_layer_norm, tl.attention.output.LayerNorm)
        _copy(sl.ffn.lin1, tl.intermediate.dense)
        _copy(sl.ffn.lin2, tl.output.dense)
        _copy(sl.output_layer_norm, tl.output.LayerNorm)
    head: Any = getattr(teacher, "cls", None)
    if head is None or not hasattr(head, "predictions"):
        raise ConfigError(f"{type(teacher).__name__} has no BERT MLM head (cls.predictions)")
    p = head.predictions
    _copy(student.vocab_transform, p.transform.dense)
    _copy(student.vocab_layer_norm, p.transform.LayerNorm)
    if not student.config.tie_word_embeddings:
        student.vocab_projector.weight.copy_(p.decoder.weight)
    student.vocab_projector.bias.copy_(p.bias)
    student.config.bertdistill_copied_layers = list(layers)
    return student


def student_layers(n_teacher: int, student_cfg: Any, selection: str) -> list[int]:
    """Teacher layers to copy: ``student.layers``, else ``selection`` over ``student.num_layers`` (default
    half the teacher's depth, at least 1)."""
    if student_cfg.layers:
        return list(student_cfg.layers)
    n_s = student_cfg.num_layers or max(1, n_teacher // 2)
    try:
        return select_layers(n_teacher, n_s, selection)
    except ValueError as e:
        raise ConfigError(str(e)) from e


class DistilBertWithTaskHead(nn.Module):
    """The trainable bundle of a run with the ``task`` stage: the masked-LM student and a sequence classifier
    that share one body (``classifier.distilbert is mlm.distilbert``; another family's ``base_model_prefix``
    likewise). ``forward(head=...)`` runs either, so a DDP wrapper around the bundle sees every step."""

    def __init__(self, mlm: PreTrainedModel, classifier: PreTrainedModel) -> None:
        super().__init__()
        setattr(classifier, classifier.base_model_prefix, getattr(mlm, mlm.base_model_prefix))
        self.mlm = mlm
        self.classifier = classifier

    def forward(self, head: str = "mlm", **inputs: Any) -> Any:
        return (self.classifier if head == "classifier" else self.mlm)(**inputs)


class DistilBertRunner(Runner):
    """DistilBERT students at inference: the masked LM of a pre-training run is scored by held-out perplexity
    (:class:`~bertdistill.mlm_head.MLMRunner`), a classifier (the ``task`` stage's export) by the task's
    metrics; a DistilBERT takes no ``token_type_ids`` (other families' students keep them)."""

    @classmethod
    def load(cls, path: Any, recipe: Mapping[str, Any], task: Any) -> Runner:
        if task is not None and task.name == "mlm":
            return MLMRunner.load(path, recipe, task)
        return super().load(path, recipe, task)

    def predict(self, batch: Batch, **options: Any) -> Any:
        inputs = batch["inputs"]
        if not takes_token_types(self.model):
            inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        return super().predict({**batch, "inputs": inputs}, **options)


# ----------------------------------------------------------------------------------------------- method


@register("distilbert")
class DistilBert(Method):
    """DistilBERT: pre-training distillation on raw text into a half-depth student, L_ce + L_mlm + L_cos.

    From a BERT teacher the student is a DistilBERT; from another family's masked LM, that family's own masked LM
    at half depth."""

    config_cls = DistilBertMethodConfig

    @classmethod
    def control_recipe(cls, recipe: dict[str, Any], steps: int) -> dict[str, Any] | None:
        return None

    @classmethod
    def control_unavailable(cls) -> str:
        return (
            "distilbert distils during pre-training: its control is the layer-copy student fine-tuned on a task "
            "with the same steps (benchmarks/distilbert_bench.py, row layer_copy), not one run"
        )

    runner_cls = DistilBertRunner
    cfg: DistilBertMethodConfig
    test_config = MethodTestConfig(
        sections={
            "method": {"corpus": ["{corpus}"], "heldout_fraction": 0.1},
            "teacher": {"path": "{mlm_teacher}"},
            "data": {"task": "mlm", "path": None, "max_length": 24},
        },
        # the soft-target term alone (the MLM term's masks move with each batch order)
        overfit={"method": {"alpha_mlm": 0.0, "alpha_cos": 0.0}},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.cfg.task_teacher is None and self.task.name != "mlm":
            raise ConfigError(
                "distilbert distils on raw text: set data.task: mlm (the corpus is method.corpus); for the "
                "optional task stage set method.task_teacher and data.task to the teacher's task"
            )
        if self.cfg.task_teacher is not None and (self.task.name == "mlm" or self.task.regression):
            raise ConfigError(
                "the distilbert task stage (method.task_teacher) needs data.task = the classification task of "
                "that teacher (e.g. sst2) and its data.path"
            )
        st = self.run.student
        if st.layer_selection != "first" or st.preset or st.config_overrides:
            raise ConfigError(
                "distilbert's student has the teacher's widths and is chosen with student.num_layers / "
                "student.layers and method.layer_selection (not student.layer_selection, preset or "
                "config_overrides)"
            )

    def load_teacher_model(self, path: str, stage: Stage | None = None) -> nn.Module:
        if stage is not None and stage.name == "task":
            return super().load_teacher_model(path, stage)  # the fine-tuned classifier
        teacher = load_mlm_teacher(path, self.run.teacher.trust_remote_code)
        self._teacher_type = str(teacher.config.model_type)
        return teacher

    def _student_type(self) -> str:
        """The student's ``model_type`` before it is built: a pre-trained student's own, else ``distilbert``
        from a BERT teacher and the teacher's family otherwise."""
        st = self.run.student
        if st.init == "pretrained" and st.path:
            return str(from_pretrained(AutoConfig, st.path).model_type)
        teacher = getattr(self, "_teacher_type", "bert")
        return "distilbert" if teacher == "bert" else teacher

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
        mlm, info = self._build_mlm_student(teacher)
        if self.cfg.task_teacher is None:
            return BuiltStudent(mlm, info)
        cfg: Any = copy.deepcopy(mlm.config)
        cfg.num_labels = self.task.num_labels
        cfg.id2label = dict(enumerate(self.task.labels))
        cfg.label2id = {lab: i for i, lab in enumerate(self.task.labels)}
        classifier = (
            DistilBertForSequenceClassification(cfg)
            if isinstance(mlm, DistilBertForMaskedLM)
            else AutoModelForSequenceClassification.from_config(cfg)
        )
        return BuiltStudent(DistilBertWithTaskHead(mlm, classifier), info)

    def export_model(self, bundle: nn.Module, stage: Stage | None = None) -> Any:
        """After the ``pretrain`` stage the masked LM; after the ``task`` stage (and at the end of a run that
        has one) the classifier."""
        if isinstance(bundle, DistilBertWithTaskHead):
            last = stage is None or stage.name == "task"
            return bundle.classifier if last else bundle.mlm
        return bundle

    def runner(self, bundle: nn.Module, tokenizer: Any, stage: Stage | None) -> Runner:
        model = self.export_model(bundle, stage)
        if not isinstance(bundle, DistilBertWithTaskHead) or model is bundle.mlm:
            return MLMRunner(model, tokenizer, self.task)
        return DistilBertRunner(model, tokenizer, self.task)

    def _build_mlm_student(self, teacher: nn.Module | None) -> tuple[PreTrainedModel, dict[str, Any]]:
        model, info = self._mlm_student(teacher)
        self._student_takes_types = takes_token_types(model)
        return model, info

    def _mlm_student(self, teacher: nn.Module | None) -> tuple[PreTrainedModel, dict[str, Any]]:
        st = self.run.student
        if st.init == "pretrained":
            if not st.path:
                raise ConfigError("student.init: pretrained needs student.path (a masked-LM dir)")
            model = from_pretrained(AutoModelForMaskedLM, st.path)
            if teacher is not None:
                _check_same_shape(model.config, getattr(teacher, "config"), st.path)  # noqa: B009
            return model, {"init": "pretrained", "path": st.path}
        if teacher is None:
            raise ConfigError("distilbert needs a teacher (teacher.path: a masked-LM dir)")
        n_t = int(getattr(teacher, "config").num_hidden_layers)  # noqa: B009
        layers = student_layers(n_t, st, self.cfg.layer_selection)
        tcfg: Any = getattr(teacher, "config")  # noqa: B009
        if st.init == "random":
            cfg = student_config(tcfg, len(layers))
            model = (
                DistilBertForMaskedLM(cfg)
                if isinstance(cfg, DistilBertConfig)
                else AutoModelForMaskedLM.from_config(cfg)
            )
            return model, {"init": "random", "layers": len(layers)}
        if tcfg.model_type == "bert":
            model = distilbert_from_teacher(teacher, layers, self.cfg.fold_token_type)  # type: ignore[arg-type]
        else:  # another family: its own masked LM with the selected layers (DistilRoBERTa's recipe)
            try:
                model = copy_layers(teacher, layers)  # type: ignore[arg-type]
            except (ValueError, KeyError) as e:
                raise ConfigError(f"distilbert copies a selection of the teacher's layers: {e}") from e
        return model, {"init": "teacher", "teacher_layers": layers, "teacher_depth": n_t}

    def stages(self) -> list[Stage]:
        c = self.cfg
        # masks change every time a batch is formed: teacher outputs cannot be cached
        frozen = _without_position_embeddings if c.freeze_position_embeddings else None
        pretrain = Stage("pretrain", max_steps=c.pretrain_steps, cacheable=False, param_groups=frozen)
        if c.task_teacher is None:
            return [pretrain]
        pretrain.data, pretrain.evaluate = "pretrain", False  # the run's eval set is the task's dev set
        task = Stage(
            "task",
            data="train",
            max_steps=c.task_steps,
            epochs=c.task_epochs,
            lr=c.task_lr,
            teacher=c.task_teacher,
        )
        return [pretrain, task]

    def teacher_needs(self, stage: Stage, bundle: nn.Module) -> Needs:
        if stage.name == "task":
            return Needs(logits=True)
        return Needs(logits=True, hidden_states=self.cfg.alpha_cos > 0, hidden_layers=(-1,))

    # ------------------------------------------------------------------ data
    def datasets(self, tokenizer: Any) -> dict[str, Any]:
        with_task = self.cfg.task_teacher is not None
        # data.max_train_examples / max_eval_examples subsample the task's sets when there is a task stage
        corpus = corpus_datasets(self.cfg, self.run, tokenizer, subsample=not with_task)
        data = corpus
        if with_task:
            # the task's train / dev sets, tokenised before the tokenizer drops token_type_ids: a pair task's
            # BERT teacher needs them (a DistilBERT student ignores them)
            data = {**super().datasets(tokenizer), "pretrain": corpus["train"]}
        if self._student_type() == "distilbert":
            drop_token_type_ids(tokenizer)
        return data

    def collator(self, tokenizer: Any, datasets: Mapping[str, Dataset]) -> Any:
        corpus = datasets["pretrain" if self.cfg.task_teacher is not None else "train"]
        mlm = MLMCollator(tokenizer, corpus.mask_weights, self.cfg, self.run.train.seed)  # type: ignore[attr-defined]
        if self.cfg.task_teacher is None:
            return mlm
        task = Collator(tokenizer.pad_token_id or 0, regression=self.task.regression)

        def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
            # corpus items are unlabelled raw text; task items carry labels
            return task(items) if "labels" in items[0] else mlm(items)

        return collate

    # ------------------------------------------------------------------ step
    def student_inputs(self, batch: Batch, stage: Stage) -> dict[str, Any]:
        inputs = batch["inputs"]
        if not getattr(self, "_student_takes_types", False):
            inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        cos = self.cfg.alpha_cos > 0
        if self.cfg.task_teacher is None:
            return {**inputs, "output_hidden_states": cos}
        if stage.name == "task":
            return {**inputs, "head": "classifier"}
        return {**inputs, "head": "mlm", "output_hidden_states": cos}

    def loss(
        self, stage: Stage, batch: Batch, student_out: Any, teacher_out: Features | None, bundle: nn.Module
    ) -> dict[str, Tensor]:
        assert teacher_out is not None and teacher_out.logits is not None
        c = self.cfg
        if stage.name == "task":
            return hinton_terms(
                student_out.logits,
                teacher_out.logits,
                batch.get("labels"),
                c.task_alpha,
                c.task_temperature,
                regression=False,
            )
        mask = batch["inputs"]["attention_mask"]
        labels = batch["mlm_labels"]
        rows = labels != -100 if c.restrict_ce_to_mask else mask
        terms: dict[str, Tensor] = {}
        if c.alpha_ce > 0:
            terms["ce"] = c.alpha_ce * masked_soft_target_kl(
                student_out.logits, teacher_out.logits, rows, c.temperature
            )
        if c.alpha_mlm > 0:
            terms["mlm"] = c.alpha_mlm * mlm_ce(student_out.logits, labels)
        if c.alpha_cos > 0:
            terms["cos"] = c.alpha_cos * masked_cosine(
                student_out.hidden_states[-1], teacher_out.hidden_states[-1], mask
            )
        return terms


def _without_position_embeddings(bundle: nn.Module) -> ParamGroups:
    """Every parameter of the bundle but the student's position embeddings (frozen for the stage)."""
    return [
        {
            "params": [
                (n, p)
                for n, p in bundle.named_parameters()
                if not n.endswith("embeddings.position_embeddings.weight")
            ]
        }
    ]


def drop_token_type_ids(tokenizer: Any) -> None:
    """The DistilBERT student takes no ``token_type_ids``: make the tokenizer saved next to it (and reloaded
    with it) stop producing them, as HF's DistilBERT tokenizers do."""
    names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
    tokenizer.model_input_names = names
    tokenizer.init_kwargs["model_input_names"] = names


__all__ = [
    "DistilBert",
    "DistilBertMethodConfig",
    "DistilBertWithTaskHead",
    "distilbert_config",
    "distilbert_from_teacher",
    "drop_token_type_ids",
    "load_mlm_teacher",
    "student_config",
    "student_layers",
]
