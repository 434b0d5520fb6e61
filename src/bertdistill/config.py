"""Typed, strict run configuration.

A recipe is YAML *data* (``yaml.safe_load``) mapped onto dataclasses. Unknown keys are errors that list the
valid keys; values are coerced to the field's declared type (so ``lr: 3e-5``, which YAML 1.1 reads as a
string, becomes a float); ``--set train.lr=3e-5`` overrides go through the same typing. The ``method``
section is dispatched by its ``name`` to the method's own config class (declared in its file).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

import yaml


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message says what and how to fix it."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'lr'?)"`` when ``word`` is close to one of ``choices``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------------------------- sections


@dataclass
class MethodConfig:
    """Base of every method's config; subclasses live in ``methods/<paper>.py``."""

    name: str = ""

    train_defaults: ClassVar[Mapping[str, Any]] = {}
    """``train.*`` values of this method that replace :class:`TrainConfig`'s defaults where a recipe does not set
    them (Tang et al.'s BiLSTM: AdaDelta's eps, no weight decay, no clipping, 30 epochs), so that a recipe that
    leaves them out — or ``distill --method M --task T`` for a task without a shipped recipe — still trains the
    method as its paper does."""


@dataclass
class TeacherConfig:
    path: str | None = None
    """HF hub name, local model dir, or the alias ``minilm-l6`` (offline MiniLM-L6-H384 package)."""
    cache: bool = True
    """Compute the teacher outputs a method needs once, store them on disk and reuse them."""
    cache_dir: str | None = None
    """Where cached teacher outputs live (default ``$BERTDISTILL_CACHE`` or ``~/.cache/bertdistill``)."""
    cache_dtype: str = "auto"
    """How cached features are stored: ``float32``, ``bfloat16`` or ``float16``; ``auto`` stores them in the precision
    they were computed in (``bfloat16`` under ``train.mixed_precision: bf16``, ``float16`` under ``fp16``, else
    ``float32``). Part of the cache key; features are served to the losses as float32 either way."""
    batch_size: int | None = None
    """Batch size for teacher-only passes (building the teacher cache). Default: 32 on a CPU, 128 on an
    accelerator. On this project's CPU (1 thread, length-sorted SST-2 batches, MiniLM-L6 with hidden states), batch 32
    runs 262 sentences/s in fp32 and 454 in bf16 against 218 and 408 at batch 128 (``docs/speed.md``)."""
    trust_remote_code: bool = False

    CACHE_DTYPES: ClassVar[tuple[str, ...]] = ("auto", "float32", "bfloat16", "float16")

    def __post_init__(self) -> None:
        if self.cache_dtype not in self.CACHE_DTYPES:
            raise ConfigError(
                f"teacher.cache_dtype must be one of {', '.join(self.CACHE_DTYPES)}, got {self.cache_dtype!r}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"teacher.batch_size must be >= 1, got {self.batch_size}")

    def resolved_batch_size(self, device_type: str) -> int:
        """``batch_size``, or its default for a device of type ``device_type`` (``cpu``, ``cuda``, ...)."""
        if self.batch_size is not None:
            return self.batch_size
        return 32 if device_type == "cpu" else 128

    def resolved_cache_dtype(self, mixed_precision: str) -> str:
        """``cache_dtype`` with ``auto`` resolved against the run's ``train.mixed_precision``."""
        if self.cache_dtype != "auto":
            return self.cache_dtype
        return {"bf16": "bfloat16", "fp16": "float16"}.get(mixed_precision, "float32")


@dataclass
class StudentConfig:
    init: str = "teacher"
    """``teacher``: copy embeddings and chosen layers from the teacher; ``pretrained``: load ``path``;
    ``random``: a fresh model from the teacher's (or ``path``'s) config."""
    path: str | None = None
    num_layers: int | None = None
    layers: list[int] | None = None
    """Teacher layers (0-based) to copy, in order; overrides ``num_layers`` / ``layer_selection``."""
    layer_selection: str = "first"
    """``first`` | ``last`` | ``uniform`` (evenly spread, first and last included — DistilBERT's rule)."""
    preset: str | None = None
    """A named size from ``students.PRESETS``."""
    config_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra HF config fields for the student (``hidden_size``, ``intermediate_size``, ...)."""

    INITS: ClassVar[tuple[str, ...]] = ("teacher", "pretrained", "random")

    def __post_init__(self) -> None:
        if self.init not in self.INITS:
            raise ConfigError(f"student.init must be one of {list(self.INITS)}, got {self.init!r}")
        if self.layer_selection not in ("first", "last", "uniform"):
            raise ConfigError(
                f"student.layer_selection must be first, last or uniform, got {self.layer_selection!r}"
            )


@dataclass
class DataConfig:
    task: str = "sst2"
    """A GLUE task name, or ``custom`` (then set text_fields / label_field / labels or regression)."""
    path: str | None = None
    """A GLUE-style TSV dir, a CSV/JSONL file or dir; unset = the HF hub (``nyu-mll/glue``)."""
    format: str = "auto"
    """``auto`` | ``glue_tsv`` | ``csv`` | ``jsonl`` | ``hf``."""
    train_split: str = "train"
    eval_split: str = "dev"
    text_fields: list[str] = field(default_factory=list)
    label_field: str = "label"
    labels: list[str] = field(default_factory=list)
    regression: bool = False
    metrics: list[str] = field(default_factory=list)
    """Custom tasks: the metrics reported, the first one selecting the best model; unset = accuracy (pearson,
    spearman for regression). Classification: accuracy, f1 (binary: the second label is the positive class),
    macro_f1, matthews; regression: pearson, spearman. GLUE tasks keep their official metrics."""
    max_length: int = 128
    max_train_examples: int | None = None
    """Subsample the training set (seeded) — for quick runs; the full recipe leaves it unset."""
    max_eval_examples: int | None = None
    selection_fraction: float | None = None
    """Hold out this fraction of the training examples (a fixed seeded split, :func:`bertdistill.data.loading.
    selection_split`) for model selection: the run never trains on them and evaluates on them *instead of*
    ``eval_split``, so dev stays untouched (``bertdistill sweep`` sets it). Unset = train on all, evaluate on dev."""
    bucket_by_length: bool = True
    """Group examples of similar length into batches (shuffled chunks, then sorted): less padding."""
    bad_rows: str = "error"
    """A data row that cannot be read (too few fields, a label outside the task's set, bad JSON): ``error``
    stops with its file and line; ``skip`` drops it and counts it in ``metrics.json`` (``data.skipped_rows``)."""

    def __post_init__(self) -> None:
        if self.bad_rows not in ("error", "skip"):
            raise ConfigError(f"data.bad_rows must be error or skip, got {self.bad_rows!r}")
        if self.format not in ("auto", "glue_tsv", "csv", "jsonl", "hf"):
            raise ConfigError(f"data.format must be auto, glue_tsv, csv, jsonl or hf, got {self.format!r}")
        if self.selection_fraction is not None and not 0 < self.selection_fraction < 1:
            raise ConfigError(
                f"data.selection_fraction must be between 0 and 1 (e.g. 0.1), got {self.selection_fraction}"
            )
        if self.max_length < 8:
            raise ConfigError(f"data.max_length must be at least 8, got {self.max_length}")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: int | None = None
    """Optimizer steps of each stage; when set it overrides ``epochs`` (and the stages' own epochs) and caps a
    stage that has its own step count (mobilebert's ``method.layer_steps``, tinybert's ``method.*_steps``, …)."""
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 5e-5
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    optimizer: str = "adamw"
    """``adamw`` | ``adadelta`` (Tang et al.'s BiLSTM) | ``sgd``; a method's stage may choose its own."""
    adadelta_rho: float = 0.95
    momentum: float = 0.0
    """SGD momentum."""
    fused_adam: bool = True
    """Use torch's fused AdamW kernel where the parameters' device supports it (CPU, CUDA): the same
    update in one pass per tensor, several times faster than the per-tensor loop (on CPU the optimizer
    step of a small student is otherwise a large share of the step). False = the reference loop."""
    persistent_embedding_grad: bool = True
    """Keep one gradient buffer per large trainable input-embedding table of the student across steps and add
    each batch's rows into it, instead of allocating and zero-filling a dense table-sized gradient every step
    (47 MB for a BERT WordPiece table at width 384). The optimizer sees the same dense gradient, so the training
    is unchanged (bit-identical in the usual case); it only saves time. Applied in single-process runs without
    ``train.compile``, to untied tables of ≥ 4,096 rows. See docs/speed.md."""
    scheduler: str = "linear"
    """``linear`` (warm-up then linear decay) | ``constant`` (warm-up then flat) | ``cosine``."""
    warmup_ratio: float = 0.1
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    """``no`` | ``fp16`` | ``bf16`` (accelerate)."""
    compile: bool | str = False
    """Compile the student's training forward and backward with ``torch.compile`` (inductor, through
    accelerate's dynamo plugin): ``true`` (the default mode) or a mode name (``max-autotune``,
    ``max-autotune-no-cudagraphs``, ``reduce-overhead``). The first batches of each new shape pay the compile
    time; evaluation, saving and export use the eager module. See docs/speed.md."""
    seed: int = 42
    eval_every: int | None = None
    """Evaluate every N optimizer steps; unset = at the end of each epoch."""
    save_every: int | None = None
    """Write a resumable checkpoint every N steps; unset = at every evaluation."""
    keep_last: int = 2
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without improvement of the main metric."""
    metric_for_best: str | None = None
    """Defaults to the task's main metric."""
    log_every: int = 10
    cpu_threads: int | None = None
    control: bool = False
    """Also train the same student without distillation (same init, data, seed and steps) into
    ``<output_dir>/control`` and report both (``distill --control``)."""
    log_with: list[str] | str | None = field(default_factory=list)
    """Experiment trackers (accelerate's) that also get the loss terms, lr and eval metrics: a name or a list
    (``tensorboard``, ``wandb``, ``mlflow``, ``comet_ml``, ``aim``, ``clearml``, ``dvclive``, ``swanlab``,
    ``trackio``); empty = ``log.jsonl`` only. See docs/tracking.md."""
    tracking_dir: str | None = None
    """Where file-based trackers (tensorboard, ...) write; default ``<output_dir>/tracking``."""

    def __post_init__(self) -> None:
        if self.scheduler not in ("linear", "constant", "cosine"):
            raise ConfigError(f"train.scheduler must be linear, constant or cosine, got {self.scheduler!r}")
        if self.optimizer not in ("adamw", "adadelta", "sgd"):
            raise ConfigError(f"train.optimizer must be adamw, adadelta or sgd, got {self.optimizer!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"train.mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if isinstance(self.compile, str) and self.compile not in COMPILE_MODES:
            raise ConfigError(
                f"train.compile must be true, false or a torch.compile mode ({', '.join(COMPILE_MODES)}), "
                f"got {self.compile!r}"
            )
        for name in ("batch_size", "eval_batch_size", "grad_accum", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr must be a number > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(
                f"train.max_steps must be >= 1 (or null to run by train.epochs), got {self.max_steps}"
            )
        if self.max_steps is None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ConfigError(
                f"train.epochs must be a number > 0 (or set train.max_steps), got {self.epochs}"
            )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"train.weight_decay must be a number >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.adam_eps) and self.adam_eps > 0):
            raise ConfigError(f"train.adam_eps must be a number > 0, got {self.adam_eps}")
        betas = list(self.adam_betas)
        if len(betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in betas):
            raise ConfigError(
                f"train.adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {betas}"
            )
        if not 0 <= self.adadelta_rho <= 1 or not (math.isfinite(self.momentum) and self.momentum >= 0):
            raise ConfigError(
                f"train.adadelta_rho must be in [0, 1] and train.momentum >= 0; got {self.adadelta_rho}, "
                f"{self.momentum}"
            )
        if self.max_grad_norm is not None and not (
            math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0
        ):
            raise ConfigError(
                f"train.max_grad_norm must be >= 0 (0 or null: no clipping), got {self.max_grad_norm}"
            )
        self.log_with = _tracker_names(self.log_with)

    @property
    def trackers(self) -> list[str]:
        """``log_with`` as a list (``__post_init__`` has normalised it)."""
        return list(self.log_with or [])


def _tracker_names(value: list[str] | str | None) -> list[str]:
    """``"tensorboard"``, ``"tensorboard,wandb"`` or a list -> checked, lower-case names; none -> ``[]``."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    names = [str(n).strip().lower() for n in items if str(n).strip() and str(n).strip().lower() != "none"]
    if not names:
        return []
    from accelerate.utils import LoggerType

    valid = [t.value for t in LoggerType if t.value != "all"]
    for n in names:
        if n not in valid:
            raise ConfigError(
                f"train.log_with: unknown tracker {n!r}{did_you_mean(n, valid)}; valid: {', '.join(valid)}"
            )
    return list(dict.fromkeys(names))


@dataclass
class RunConfig:
    method: MethodConfig
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str | None = None
    """Default: ``runs/<method>-<task>``."""

    def __post_init__(self) -> None:
        if self.output_dir is not None and not str(self.output_dir).strip():
            raise ConfigError("output_dir is empty; give a dir (or leave it unset for runs/<method>-<task>)")

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.method.name}-{self.data.task}")

    def resolved_tracking_dir(self) -> Path:
        """``train.tracking_dir``, else ``<output_dir>/tracking``."""
        if self.train.tracking_dir:
            return Path(self.train.tracking_dir).expanduser()
        return self.resolved_output_dir() / "tracking"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self, path: str | os.PathLike[str]) -> None:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        Path(path).write_text(text)


# ----------------------------------------------------------------------------------------------- building


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:  # one line, as a recipe's: the problem, not PyYAML's multi-line report
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"cannot parse value {text!r} as YAML: {problem}") from e


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to the declared type ``tp`` or raise a ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _parse_scalar(value) if isinstance(value, str) else value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~"))
        ):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)  # type: ignore[arg-type]
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = _parse_scalar(value)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = _parse_scalar(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        # a value set by a dotted override (`student.config_overrides.dropout=0.3`) arrives as text: type it
        # as the mapping's value type says (Any: YAML-parsed, as an `Any` field is)
        _, value_tp = typing.get_args(tp) or (str, Any)
        return {k: _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def build_dataclass(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, strictly: unknown keys are errors that list valid ones."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or cls.__name__}{did_you_mean(unknown[0], names)}; "
            f"valid keys: {names}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw recipe dict (values are typed later, by field)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.lr=3e-5)")
        dotted, value = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = raw
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if (
                isinstance(child, str)
                and child.lstrip().startswith("{")
                and isinstance(parsed := _parse_scalar(child), dict)
            ):
                # an earlier override set this mapping whole (`student.config_overrides={...}`)
                child = node[k] = parsed
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def config_from_dict(raw: dict[str, Any], method_config: Callable[[str], type[MethodConfig]]) -> RunConfig:
    """A typed RunConfig from a raw recipe dict; ``method_config(name)`` gives the config class of the method
    named in the ``method`` section (the registry's, through :func:`bertdistill.recipes.load_config`)."""
    raw = dict(raw)
    method_raw = raw.pop("method", None)
    if not isinstance(method_raw, dict) or "name" not in method_raw:
        raise ConfigError(
            "the recipe needs a `method:` section with a `name` (see `bertdistill methods` for the names)"
        )
    method_cls = method_config(str(method_raw["name"]))
    method_cfg = build_dataclass(method_cls, method_raw, "method")
    train_raw = raw.get("train")
    if method_cls.train_defaults and (train_raw is None or isinstance(train_raw, dict)):
        raw["train"] = {**method_cls.train_defaults, **(train_raw or {})}
    top = {f.name: f for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw) - set(top))
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {unknown}{did_you_mean(unknown[0], top)}; valid keys: {list(top)}"
        )
    hints = typing.get_type_hints(RunConfig)
    kwargs = {k: _coerce(v, hints[k], k) for k, v in raw.items()}
    return RunConfig(method=method_cfg, **kwargs)


def read_recipe_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A recipe file as a raw dict (``yaml.safe_load``), with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"recipe {str(path)!r} not found (expected a YAML file such as recipes/kd/sst2.yaml)"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:  # one line: the position and the problem, not PyYAML's multi-line report
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    for key, line in duplicate_keys(path.read_text()):
        raise ConfigError(
            f"{path}:{line}: duplicate key {key!r}: YAML keeps only the last one, so the first would be ignored "
            "without a word; merge them into one"
        )
    return raw


def duplicate_keys(text: str) -> list[tuple[str, int]]:
    """Keys that repeat within one mapping of a YAML document, with the (1-based) line of each repeat. Read from
    the document's node tree (``yaml.compose``: no object is constructed), since loading keeps the last one."""
    found: list[tuple[str, int]] = []

    def walk(node: Any) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        found.append((key.value, key.start_mark.line + 1))
                    seen.add(key.value)
                walk(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    walk(yaml.compose(text, Loader=yaml.SafeLoader))
    return found


def deep_copy_dicts(d: dict[str, Any]) -> dict[str, Any]:
    return {k: deep_copy_dicts(v) if isinstance(v, dict) else v for k, v in d.items()}
