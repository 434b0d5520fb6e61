"""The method protocol: what a distillation method tells the engine, for training and for inference.

A method (one file in ``methods/``) builds the trainable *bundle* (the student plus anything else that
trains: projections, branch heads, task heads), lists its *stages* (which data, which parameters train at
which learning rate, for how long, with which teacher), says which teacher outputs each stage *needs*, and
turns one batch's student and teacher outputs into a ``dict`` of weighted loss terms. For inference it says
how a saved student is loaded and run (:class:`Runner`), with the options it accepts (``--speed``,
``--head`` ...). The engine (``training/loop.py``, ``evaluation.py``, ``inference.py``, ``cli.py``) only
calls these hooks; it never asks which method it runs.

Data flow between hooks is explicit: each hook receives what it needs (the teacher, the datasets, the
*unwrapped* bundle) and no hook depends on another having run before it. The call order the engine uses::

    method = cls(run, task)
    teacher = method.load_teacher_model(path)             # the run's teacher (when teacher.path is set)
    datasets = method.datasets(tokenizer)                 # tokenizer: the teacher's (or student.path's)
    built = method.build_student(teacher, datasets)       # BuiltStudent(bundle, info)
    collate = method.collator(tokenizer, datasets)
    for stage in method.stages():                          # a stage with trains=False only builds its
        needs = method.teacher_needs(stage, bundle)        # teacher outputs in the cache (no steps)
        ...  bundle(**method.student_inputs(batch, stage))  -> ModelOutput   (through the DDP wrapper)
        ...  method.loss(stage, batch, student_out, teacher_out, bundle)  -> dict of weighted terms
    method.export_model(bundle, last_stage).save_pretrained(...)

Every hook but ``build_student`` and ``loss`` has a default that serves an HF sequence classifier.
"""

from __future__ import annotations

import inspect
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Sampler

from .config import ConfigError, MethodConfig, RunConfig
from .data.loading import (
    BatchSampler,
    Collator,
    Examples,
    run_eval_examples,
    run_train_examples,
    subsample,
    tokenize,
)
from .data.tasks import TaskSpec, metrics_from_logits
from .hub import from_pretrained

if TYPE_CHECKING:
    from transformers.utils import ModelOutput

ParamGroups = list[dict[str, Any]]
"""``[{"params": [(name, param), ...], "lr_scale": 0.1}, ...]`` — ``lr_scale`` multiplies the stage's lr."""

Batch = Mapping[str, Any]
"""A collated batch: ``idx`` (row numbers, for the teacher cache), ``inputs`` (the student's model inputs),
``labels`` (absent when unlabelled), optional ``teacher_inputs`` (when the teacher tokenises differently) and
``group`` (the dataset group — e.g. the task — of a grouped dataset; every row of a batch has the same)."""


# ----------------------------------------------------------------------------------------------- features


@dataclass(frozen=True)
class Needs:
    """Teacher outputs a loss reads. ``hidden_layers`` / ``attention_layers`` select which entries are kept
    (hidden: 0..L with 0 = embeddings; attention: 0..L-1); ``None`` keeps all when the flag is on."""

    logits: bool = True
    hidden_states: bool = False
    attentions: bool = False
    hidden_layers: tuple[int, ...] | None = None
    attention_layers: tuple[int, ...] | None = None
    cls_only: bool = False
    """Keep only the first position of each hidden state (``[B, 1, H]``): [CLS]-level losses (PKD) need no
    more, and a teacher cache of full states is ~T times larger."""
    token_topk: int | None = None
    """Keep only the top-k of each row of token-level logits (:class:`TokenTopK`): per-token soft labels over a
    vocabulary (C-MLM), whose full ``[T, V]`` rows no cache could hold. The model's ``logits`` are ragged rows
    ``[M, V]`` with ``row_counts`` ``[B]`` (the rows of each example, in order), or ``[B, T, V]`` (every
    position)."""

    def key(self) -> str:
        return repr(self)


@dataclass
class TokenTopK:
    """The top-k logits of token-level rows, ragged over a batch: the rows of example 0, then of example 1 …
    (``counts[b]`` rows each), each with its ``k`` largest logits (descending) and their vocabulary ids."""

    values: Tensor
    """``[M, k]`` logits, M = ``counts.sum()``."""
    indices: Tensor
    """``[M, k]`` vocabulary ids (long)."""
    counts: Tensor
    """``[B]`` rows per example."""


@dataclass
class Features:
    """Selected outputs of one teacher forward pass, keyed explicitly by layer index: ``hidden_states[m]`` is
    the HF ``hidden_states[m]`` (0 = embeddings, m = output of layer m), ``attentions[i]`` layer i (0-based)."""

    logits: Tensor | None = None
    hidden_states: dict[int, Tensor] = field(default_factory=dict)  # index in HF hidden_states -> [B, T, H]
    attentions: dict[int, Tensor] = field(default_factory=dict)  # layer (0-based) -> [B, heads, T, T]
    topk: TokenTopK | None = None
    """Per-token top-k logits (``Needs.token_topk``)."""


# ----------------------------------------------------------------------------------------------- stages


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
    optimizer: str | None = None
    """``adamw`` | ``adadelta`` | ``sgd``; unset = ``train.optimizer``."""
    batch_size: int | None = None
    param_groups: Callable[[nn.Module], ParamGroups] | None = None
    """Which parameters train (others are frozen for the stage), given the unwrapped bundle; ``None`` = all."""
    uses_teacher: bool = True
    """Whether the stage reads teacher outputs (then the run needs a teacher for it)."""
    evaluate: bool = True
    """Whether the task metric is meaningful after this stage (False for e.g. pre-training stages)."""
    cacheable: bool = True
    """Whether teacher outputs for this stage's data may be cached (False when data changes per epoch)."""
    trains: bool = True
    """False: a *preparation* stage — nothing trains; the engine builds the stage's teacher outputs for its data
    in the teacher cache (timed, with a progress bar, resumable), for the stages after it that read them (e.g.
    C-MLM's soft labels). It logs no loss terms."""
    teacher: str | None = None
    """Path / hub name of this stage's teacher (loaded with ``Method.load_teacher_model(path, stage)``);
    ``None`` = the run's ``teacher.path``. E.g. a pre-trained teacher for a general stage, then the
    fine-tuned one for the task stages."""
    group_teachers: Mapping[str, Sequence[str]] | None = None
    """For a grouped dataset (several tasks in one run): group name → teacher paths. Several paths are an
    ensemble (:class:`~bertdistill.teachers.EnsembleTeacher`: the mean of their class probabilities, or of
    their predictions for regression); an empty list = no teacher for that group (``teacher_out`` is None)."""

    def __post_init__(self) -> None:
        # a stage's own settings come from its method's config (e.g. cmlm's method.student_batch_size, mobilebert's
        # method.transfer_lr): 0 or a negative value would otherwise fall back to train.* without a word
        bad = [
            f"{name} {value}"
            for name, value, ok in (
                # epochs count only where the stage runs by epochs (tinybert: general_steps with general_epochs 0)
                (
                    "epochs",
                    self.epochs if self.max_steps is None else None,
                    lambda v: math.isfinite(v) and v > 0,
                ),
                ("max_steps", self.max_steps, lambda v: v >= 1),
                ("lr", self.lr, lambda v: math.isfinite(v) and v > 0),
                ("batch_size", self.batch_size, lambda v: v >= 1),
                ("warmup_ratio", self.warmup_ratio, lambda v: 0 <= v < 1),
            )
            if value is not None and not ok(value)
        ]
        if bad:
            raise ConfigError(
                f"stage {self.name!r}: {', '.join(bad)}: a stage's epochs, steps, lr and batch size (set by the "
                "method's config, `bertdistill recipes NAME` shows them) must be > 0 and its warm-up in [0, 1)"
            )


@dataclass(frozen=True)
class MethodTestConfig:
    """How the registry-parametrised tests (``tests/test_methods.py``) run a method on the suite's tiny
    fixtures — the method's own tiny test config, next to it (as transformers' per-model testers).

    ``sections`` update the base test recipe (a 4-layer random BERT classifier teacher ``{teacher}``, toy
    SST-2 ``{sst2}``, a 2-layer student, ``max_length`` 32); ``overfit`` further updates it for the check that
    the method's loss falls on one repeated batch (e.g. only the teacher term, when gold labels and a random
    teacher disagree). String values may name the fixtures in braces: ``{teacher}``, ``{mlm_teacher}`` (a tiny
    BERT masked LM), ``{encoder}`` (a BERT encoder without a head), ``{corpus}`` (a toy text file, one sentence
    per line), ``{sst2}``, ``{stsb}``, ``{tokenizer}``, ``{glove}`` (a toy word-vector file), ``{parallel}`` (a
    dir of toy ``source<TAB>target`` pairs: ``train.tsv``, ``dev.tsv``, ``test.tsv``)."""

    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    overfit: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    overfit_ratio: float = 0.5
    """The mean of the last 5 logged losses must fall below this × the mean of the first 3."""


@dataclass
class BuiltStudent:
    """What :meth:`Method.build_student` returns: the trainable bundle and a description for the run log."""

    bundle: nn.Module
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class InferenceOption:
    """An option a method's students accept at inference (``evaluate`` / ``compare`` / ``predict``), shown in
    ``--help`` as ``--<flag>``; e.g. FastBERT's ``speed``, a generator's ``beam``, a multi-task ``head``."""

    name: str
    type: type
    help: str
    default: Any = None
    valid: tuple[Callable[[Any], bool], str] | None = None
    """A check of a given value and the range it states (e.g. ``(lambda v: 0 <= v <= 1, "in [0, 1]")``)."""
    shapes_graph: bool = False
    """Whether the option changes what an ONNX export holds (a multi-task ``head``: that head's graph), so that an
    export made on the fly for ``--precision onnx-*`` is made with it (FastBERT's ``speed`` does not: the same
    pieces run at every speed)."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass
class Prediction:
    """Outputs of one inference batch: ``logits`` ``[B, C]`` (or ``[B, 1]`` for regression; ``None`` for
    runners that score otherwise, e.g. masked-LM perplexity) and per-row ``extras`` (e.g. FastBERT's exit
    layer and FLOPs), each ``[B]``."""

    logits: Tensor | None
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class OnnxGraph:
    """One graph that ``bertdistill export`` writes as ``<name>.onnx``: ``module(*inputs.values())`` traced on
    these example inputs (the names become the graph's input names, in this order) with the named ``outputs``.
    ``dynamic`` lists the axes of each input that vary (default: axes 0 and 1, batch and sequence)."""

    name: str
    module: nn.Module
    inputs: dict[str, Tensor]
    outputs: tuple[str, ...]
    dynamic: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


OnnxRun = Callable[[str, Mapping[str, Tensor]], list[Tensor]]
"""``run(graph, inputs)``: graph ``graph`` of an export run by ONNX Runtime on the tensors of ``inputs`` that it
takes (by name; others are ignored), its outputs in order."""


class LogitsGraph(nn.Module):
    """An HF model's ``logits`` as a function of positional tensors (named ``names``): what is traced."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True))).logits  # type: ignore[no-any-return]


def takes_token_types(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``token_type_ids`` (a DistilBERT does not)."""
    return "token_type_ids" in inspect.signature(model.forward).parameters


def model_inputs(model: nn.Module, inputs: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of ``inputs`` that ``model.forward`` takes by name (DistilBERT: no ``token_type_ids``)."""
    params = inspect.signature(model.forward).parameters
    return {k: v for k, v in inputs.items() if isinstance(v, Tensor) and k in params}


class Runner:
    """A student as the engine runs it at inference: how inputs are encoded and batched, how a batch is
    predicted (with the method's options), how the predictions are scored, and what is timed.

    The default serves any HF sequence classifier (``AutoModelForSequenceClassification``) with its own
    tokenizer. Methods whose students differ subclass it in their file and set ``Method.runner_cls``."""

    options: ClassVar[tuple[InferenceOption, ...]] = ()

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        task: TaskSpec | None = None,
        path: str | None = None,
        recipe: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.path = path
        self.recipe = dict(recipe or {})

    # -------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike[str], recipe: Mapping[str, Any], task: TaskSpec | None) -> Runner:
        """A saved student dir (or hub name): the model in eval mode and its tokenizer."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        p = str(path)
        # weights the checkpoint lacks are recorded (hub.UNTRAINED_ATTR): evaluate refuses a random head
        model = from_pretrained(AutoModelForSequenceClassification, p, mark_untrained=True).eval()
        tok = from_pretrained(AutoTokenizer, p)
        return cls(model, tok, task, p, recipe)

    # -------------------------------------------------------------- options
    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options this runner accepts with their defaults filled in; an unknown one is an error that says
        which students take it."""
        known = {o.name: o for o in self.options}
        unknown = [k for k, v in options.items() if v is not None and k not in known]
        if unknown:
            raise ConfigError(
                f"{self.path or type(self.model).__name__}: option(s) {unknown} do not apply to this student "
                f"({type(self).__name__}); it takes {sorted(known) or 'no options'}"
            )
        for k, v in options.items():
            check = known[k].valid if v is not None else None
            if check is not None and not check[0](v):
                raise ConfigError(f"{known[k].flag} must be {check[1]}, got {v}")
        return {k: options.get(k) if options.get(k) is not None else o.default for k, o in known.items()}

    def label_names(self) -> dict[int, str]:
        """Class index → name for :meth:`rows`: the model config's ``id2label``."""
        cfg: Any = getattr(self.model, "config", None)
        return {int(k): v for k, v in (getattr(cfg, "id2label", None) or {}).items()}

    def task_for(self, options: Mapping[str, Any]) -> TaskSpec | None:
        """The task this runner's predictions are read as under ``options`` (pairs or single sentences, classes
        or a score); a multi-task student's is its ``head``'s. Default: :attr:`task`."""
        return self.task

    def label(self, options: Mapping[str, Any]) -> str:
        """A row-name suffix for non-default options, e.g. ``@speed=0.5``."""
        return "".join(f"@{k}={v:g}" if isinstance(v, float) else f"@{k}={v}" for k, v in options.items())

    # -------------------------------------------------------------- data
    def eval_data(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """The ``data`` section (task, path, fields ...) to evaluate on, from the student's recipe; a
        multi-task student picks its ``head``'s."""
        return dict(self.recipe.get("data") or {})

    def encode(self, examples: Examples, max_length: int) -> Dataset:
        return tokenize(examples, self.tokenizer, max_length)

    def collator(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        regression = bool(self.task and self.task.regression)
        return Collator(self.tokenizer.pad_token_id or 0, regression=regression)

    def lengths(self, data: Dataset) -> list[int]:
        return list(getattr(data, "lengths", [1] * len(data)))  # type: ignore[arg-type]

    # -------------------------------------------------------------- running
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def predict(self, batch: Batch, **options: Any) -> Prediction:
        return Prediction(self.model(**batch["inputs"]).logits)

    def timed(self, **options: Any) -> Callable[[Batch], Any]:
        """What a latency/throughput measurement calls on a collated batch."""
        return lambda batch: self.predict(batch, **options)

    def reference(self, **options: Any) -> Callable[[Batch], Any] | None:
        """A baseline timed next to :meth:`timed` in the same run when options change the computation (e.g.
        FastBERT at full depth against early exit); ``None`` otherwise."""
        return None

    # -------------------------------------------------------------- export (``bertdistill export``)
    def onnx_graphs(self, batch: Batch, **options: Any) -> list[OnnxGraph]:
        """The graphs that make up this student in ONNX, with their inputs for ``batch`` (called once to trace
        and once per batch of the parity check, which compares each graph's outputs with its module's).
        Default: an HF sequence classifier, one graph ``model``: the forward's tensor inputs → ``logits``."""
        inputs = model_inputs(self.model, batch["inputs"])
        return [OnnxGraph("model", LogitsGraph(self.model, list(inputs)), inputs, ("logits",))]

    def onnx_predict(self, run: OnnxRun, batch: Batch, **options: Any) -> Prediction:
        """:meth:`predict` through the exported graphs (``run``), the same :class:`Prediction` as eager."""
        return Prediction(run("model", batch["inputs"])[0])

    # -------------------------------------------------------------- scoring
    def targets(self, batch: Batch) -> Tensor | None:
        return batch["labels"]  # type: ignore[no-any-return]

    def metrics(
        self, logits: Tensor | None, targets: Tensor | None, extras: Mapping[str, Tensor]
    ) -> dict[str, float]:
        """Metrics of the whole eval set (``logits``, ``targets`` and ``extras`` concatenated over batches)."""
        if self.task is None or logits is None or targets is None:
            raise ConfigError("scoring needs the task, the logits and the labels")
        return metrics_from_logits(self.task, logits, targets)

    def rows(self, pred: Prediction) -> list[dict[str, Any]]:
        """``predict`` output, one dict per example: ``label`` + ``probs``, or ``score`` (regression)."""
        cfg: Any = getattr(self.model, "config", None)
        regression = bool(self.task.regression) if self.task else getattr(cfg, "num_labels", 2) == 1
        out: list[dict[str, Any]] = []
        assert pred.logits is not None
        logits = pred.logits.float().cpu()
        if regression:
            out = [{"score": v} for v in logits.reshape(-1).tolist()]
        else:
            id2label = self.label_names()
            for p in logits.softmax(-1):
                k = int(p.argmax())
                out.append({"label": id2label.get(k, str(k)), "probs": [round(x, 6) for x in p.tolist()]})
        for name, values in pred.extras.items():
            for row, v in zip(out, values.tolist(), strict=True):
                row[name] = v
        return out

    def main_metric(self) -> str:
        """The metric that ranks this runner's scores (model selection, ``compare``'s ``score``); default: the
        task's main metric."""
        if self.task is None:
            raise ConfigError("no task: the main metric is unknown")
        return self.task.main_metric

    def generate(
        self, texts: Sequence[str], batch_size: int = 32, max_length: int = 128, **options: Any
    ) -> list[str]:
        """Text out for text in, one output per input (``bertdistill generate``): students that generate text
        (a seq2seq student) override it."""
        raise ConfigError(
            f"{self.path or type(self.model).__name__} ({type(self).__name__}) does not generate text; "
            "`bertdistill predict` gives its labels"
        )

    def describe(self) -> dict[str, Any]:
        """Size and shape for tables: parameters, layers × hidden (when the config says)."""
        cfg: Any = getattr(self.model, "config", None)
        return {
            "params": sum(p.numel() for p in self.model.parameters()),
            "layers": getattr(cfg, "num_hidden_layers", None),
            "hidden": getattr(cfg, "hidden_size", None),
        }

    def is_pair(self) -> bool:
        return bool(self.task and self.task.is_pair)

    def export_head(self, head: str, out_dir: str | os.PathLike[str]) -> None:
        """Write one head of a multi-head student as a standard single-task HF dir."""
        raise ConfigError(
            f"{self.path or type(self.model).__name__} has a single head: it is already a standard model dir"
        )


# ----------------------------------------------------------------------------------------------- the method


class Method(ABC):
    """Base class of every method; subclass directly (depth one) and decorate with ``@register``."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    runner_cls: ClassVar[type[Runner]] = Runner
    """How this method's saved students are loaded and run at inference."""
    test_config: ClassVar[MethodTestConfig] = MethodTestConfig()
    """The method's tiny test config (:class:`MethodTestConfig`)."""
    sparse_parameters: ClassVar[bool] = False
    """True when a training step may leave some trainable student parameters unused (a multi-task student runs
    one task head per batch): DDP then needs ``find_unused_parameters``, since processes can use different ones
    in the same step."""

    def __init__(self, run: RunConfig, task: TaskSpec) -> None:
        self.run = run
        self.cfg = run.method
        self.task = task

    # ------------------------------------------------------------------ the no-distillation control
    @classmethod
    def control_recipe(cls, recipe: dict[str, Any], steps: int) -> dict[str, Any] | None:
        """The recipe of this run's control (``distill --control``): the same student (init and shape), data,
        seed and number of optimizer steps (``steps``, all stages of the distilled run), without distillation.
        ``recipe`` is the distilled run's resolved config as a dict (a copy; change it freely). Default: plain
        fine-tuning of the same student for ``steps`` steps. ``None``: the method has no such control (say why
        in :meth:`control_unavailable`)."""
        recipe["student"] = cls.control_student(recipe)
        recipe["method"] = {"name": "finetune"}
        recipe["train"]["max_steps"] = steps
        return recipe

    @classmethod
    def control_student(cls, recipe: dict[str, Any]) -> dict[str, Any]:
        """The ``student`` section that builds, with plain fine-tuning, the student this method's recipe starts
        from (``recipe`` is this method's recipe as a dict; not changed). Default: the recipe's own section. A
        method that builds its student from its own options (``pkd``'s ``init_from: pretrained``) says here how
        to build that same student without it; a benchmark's ``finetune:`` row uses it too."""
        return dict(recipe.get("student") or {})

    @classmethod
    def control_unavailable(cls) -> str:
        """Why :meth:`control_recipe` returns ``None`` (shown to the user)."""
        return f"{cls.name} has no no-distillation control"

    # ------------------------------------------------------------------ teacher / student
    def load_teacher_model(self, path: str, stage: Stage | None = None) -> nn.Module:
        """The teacher as a HF model (default: sequence classification, eager attention when a stage needs
        attention maps). ``stage`` is set when a stage names its own teacher (``Stage.teacher``)."""
        from transformers import AutoModelForSequenceClassification

        kwargs: dict[str, Any] = {"trust_remote_code": self.run.teacher.trust_remote_code}
        if self.needs_attentions():
            kwargs["attn_implementation"] = "eager"
        return from_pretrained(AutoModelForSequenceClassification, path, mark_untrained=True, **kwargs)

    def needs_attentions(self) -> bool:
        """Whether any stage reads attention maps (the teacher is then loaded with eager attention)."""
        return False

    @abstractmethod
    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
        """The trainable bundle. Everything that trains must be a submodule of it."""

    def export_model(self, bundle: nn.Module, stage: Stage | None = None) -> Any:
        """The part of the bundle saved as the HF model after ``stage`` (``None``: after the last stage)."""
        return bundle

    def export_extras(self, bundle: nn.Module) -> dict[str, Tensor]:
        """Trainable tensors of the bundle that are not part of the exported HF model but that a later run
        may want back (e.g. TinyBERT's projections). Saved as ``extras.safetensors`` next to each stage's
        model; default: none."""
        return {}

    def student_tokenizer(self, tokenizer: Any, datasets: Mapping[str, Dataset]) -> Any:
        """The tokenizer saved next to the student (default: the teacher's, which the student shares)."""
        return tokenizer

    def stages(self) -> list[Stage]:
        return [Stage("train")]

    def teacher_needs(self, stage: Stage, bundle: nn.Module) -> Needs:
        return Needs()

    def prepared(self, stage: Stage, outputs: Mapping[str, Tensor]) -> dict[str, Any]:
        """Diagnostics of the teacher outputs a preparation stage (``Stage.trains`` False) built or found in the
        cache (``outputs``: the cache's tensors), added to the stage's log record; a ``warning`` entry is also
        shown to the user. Default: none."""
        return {}

    def teacher_length(self, max_length: int) -> tuple[int, str]:
        """The most tokens the teacher reads at ``data.max_length``, and why (checked against its positions).
        Default: ``max_length`` (the teacher reads the student's input)."""
        return max_length, ""

    def runs_teacher(self) -> bool:
        """Whether any stage reads the run's teacher (``teacher.path``); False = it only builds the student."""
        return any(s.uses_teacher and s.teacher is None and s.group_teachers is None for s in self.stages())

    # ------------------------------------------------------------------ data
    def datasets(self, tokenizer: Any) -> dict[str, Dataset]:
        """Datasets keyed by name: ``train`` (and ``eval`` when the task has labelled dev data, or the selection
        slice with ``data.selection_fraction``)."""
        d = self.run.data
        train = subsample(run_train_examples(d, self.task), d.max_train_examples, self.run.train.seed)
        out: dict[str, Dataset] = {"train": tokenize(train, tokenizer, d.max_length)}
        ev = run_eval_examples(d, self.task)
        if ev is not None and ev.labels is not None:
            out["eval"] = tokenize(
                subsample(ev, d.max_eval_examples, self.run.train.seed), tokenizer, d.max_length
            )
        return out

    def collator(
        self, tokenizer: Any, datasets: Mapping[str, Dataset]
    ) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return Collator(tokenizer.pad_token_id or 0, regression=self.task.regression)

    def batch_sampler(
        self, data: Dataset, batch_size: int, *, shuffle: bool, seed: int, stage: Stage | None
    ) -> Sampler[list[int]]:
        """Batches of indices; reshuffled per epoch through ``set_epoch`` (so a resumed run sees the same
        order). Default: length-bucketed random batches (``data.bucket_by_length``)."""
        lengths = list(getattr(data, "lengths", [1] * len(data)))  # type: ignore[arg-type]
        return BatchSampler(
            lengths,
            batch_size,
            shuffle=shuffle,
            bucket=self.run.data.bucket_by_length or not shuffle,
            seed=seed,
        )

    # ------------------------------------------------------------------ training step
    def student_inputs(self, batch: Batch, stage: Stage) -> dict[str, Any]:
        """Keyword arguments of the bundle's forward for this batch (called through the DDP wrapper, so that
        every computation that needs gradients happens inside one module call)."""
        return dict(batch["inputs"])

    @abstractmethod
    def loss(
        self,
        stage: Stage,
        batch: Batch,
        student_out: ModelOutput,
        teacher_out: Features | None,
        bundle: nn.Module,
    ) -> dict[str, Tensor]:
        """Weighted loss terms; the loop sums them and logs each."""

    # ------------------------------------------------------------------ evaluation
    def runner(self, bundle: nn.Module, tokenizer: Any, stage: Stage | None) -> Runner:
        """The in-training student as the inference runner that scores it on dev (the same code path as
        ``bertdistill evaluate`` on the saved model)."""
        return self.runner_cls(self.export_model(bundle, stage), tokenizer, self.task)

    def eval_options(self, stage: Stage | None) -> dict[str, Any]:
        """Inference options for evaluation during training (e.g. FastBERT's ``speed``)."""
        return {}


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / accelerate wrapper (the model itself when unwrapped)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


__all__ = [
    "Batch",
    "BuiltStudent",
    "Features",
    "InferenceOption",
    "LogitsGraph",
    "Method",
    "MethodTestConfig",
    "Needs",
    "OnnxGraph",
    "OnnxRun",
    "ParamGroups",
    "Prediction",
    "Runner",
    "Stage",
    "TokenTopK",
    "model_inputs",
    "takes_token_types",
    "unwrap",
]
