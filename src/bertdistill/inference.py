"""The one inference path: load any saved student through its method's :class:`~bertdistill.protocol.Runner`,
score it with the one eval loop (shared with training), predict raw text.

A saved student records in ``bertdistill.yaml`` which method made it (``method.name``) and for which task;
:func:`load_student` asks the registry for that method's ``runner_cls`` — an HF classifier, FastBERT with
early exit, a word-level BiLSTM, a generator, a multi-task model — and the runner does the rest. Dirs without
``bertdistill.yaml`` (a hub model, a teacher fine-tuned elsewhere) are read as HF sequence classifiers.
Nothing here names a method.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from .config import ConfigError, DataConfig
from .data.loading import Examples, resolve_task
from .data.tasks import TaskSpec
from .protocol import InferenceOption, Runner

CONFIG_FILE = "bertdistill.yaml"


def read_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The resolved recipe saved next to a student (``{}`` for dirs bertdistill did not write)."""
    f = Path(path).expanduser() / CONFIG_FILE
    if not f.is_file():
        return {}
    try:
        data = yaml.safe_load(f.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{f}: not valid YAML: {e}") from None
    return data if isinstance(data, dict) else {}


def runner_class(recipe: Mapping[str, Any]) -> type[Runner]:
    """The runner of the method that made a student (the default HF runner when unknown)."""
    from .registry import get_method

    name = (recipe.get("method") or {}).get("name")
    if not name:
        return Runner
    try:
        return get_method(str(name)).runner_cls
    except KeyError as e:
        raise ConfigError(f"the student was made by method {name!r}, which is not registered: {e}") from None


def recipe_task(recipe: Mapping[str, Any], task: str | None = None) -> TaskSpec | None:
    """The task a student was trained for (or ``task``, when given)."""
    d = dict(recipe.get("data") or {})
    if task:
        d = {"task": task} if d.get("task") != task else d
    if "task" not in d:
        return None
    fields = DataConfig.__dataclass_fields__
    return resolve_task(DataConfig(**{k: v for k, v in d.items() if k in fields and k != "path"}))


def load_student(path: str | os.PathLike[str], task: str | None = None, device: str | None = None) -> Runner:
    """Any saved student (or teacher) dir, ready to run: ``runner.predict(batch, **options)``. An ONNX export
    dir (``bertdistill export``), or one of its ``.onnx`` files, runs in ONNX Runtime."""
    from .export import is_export, load_exported, split_onnx_path
    from .hub import has_weights, what_dir_holds

    root, precision = split_onnx_path(path)
    recipe = read_recipe(root)
    if recipe and not has_weights(root):
        raise ConfigError(f"cannot load {str(path)!r}: {what_dir_holds(root)}")
    spec = recipe_task(recipe, task)
    runner = runner_class(recipe).load(str(root), recipe, spec)
    runner.model.eval()
    if device:
        runner.model.to(device)
    return load_exported(runner, root, precision) if is_export(root) else runner


def all_options() -> dict[str, tuple[InferenceOption, list[str]]]:
    """Every inference option some registered method declares, with the methods that take it (for --help)."""
    from .registry import METHODS, _load_builtin_methods

    _load_builtin_methods()
    out: dict[str, tuple[InferenceOption, list[str]]] = {}
    for name, cls in sorted(METHODS.items()):
        for opt in cls.runner_cls.options:
            out.setdefault(opt.name, (opt, []))[1].append(name)
    return out


# ----------------------------------------------------------------------------------------------- the eval loop


def _cat(parts: list[Tensor]) -> Tensor | None:
    return torch.cat(parts) if parts else None


@torch.no_grad()
def eval_loop(
    runner: Runner,
    batches: Iterable[Mapping[str, Any]],
    gather: Callable[[Tensor], Tensor] | None = None,
    **options: Any,
) -> dict[str, float]:
    """Metrics of ``runner`` over labelled ``batches`` — the loop used by training-time evaluation and by
    ``evaluate`` / ``compare``. ``gather`` collects across processes (accelerate's ``gather_for_metrics``)."""
    model = runner.model
    was_training = model.training
    model.eval()
    logits: list[Tensor] = []
    targets: list[Tensor] = []
    extras: dict[str, list[Tensor]] = {}
    device = runner.device()
    try:
        for batch in batches:
            batch = _to(batch, device)
            pred = runner.predict(batch, **options)
            y = runner.targets(batch)
            lg = pred.logits
            ex = dict(pred.extras)
            if gather is not None:
                lg = gather(lg) if lg is not None else None
                y = gather(y) if y is not None else None
                ex = {k: gather(v) for k, v in ex.items()}
            if lg is not None:
                logits.append(lg.float().cpu())
            if y is not None:
                targets.append(y.cpu())
            for k, v in ex.items():
                extras.setdefault(k, []).append(v.cpu())
    finally:
        model.train(was_training)
    return runner.metrics(_cat(logits), _cat(targets), {k: torch.cat(v) for k, v in extras.items()})


def _to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            out[k] = v.to(device)
        elif isinstance(v, Mapping):
            out[k] = {kk: vv.to(device) if isinstance(vv, Tensor) else vv for kk, vv in v.items()}
        else:
            out[k] = v
    return out


def batches_of(runner: Runner, data: Any, batch_size: int) -> Iterator[dict[str, Any]]:
    """Length-sorted batches of a dataset encoded by ``runner`` (fastest; scoring is order-free)."""
    lengths = runner.lengths(data)
    order = sorted(range(len(data)), key=lambda i: lengths[i])
    collate = runner.collator()
    for s in range(0, len(order), batch_size):
        yield collate([data[i] for i in order[s : s + batch_size]])


# ----------------------------------------------------------------------------------------------- ensembles


class EnsembleRunner(Runner):
    """Several saved models read as one (``evaluate dir1 dir2 dir3``, ``compare t1+t2+t3 student``): the mean of
    their class probabilities (returned as log-probabilities, so that ``softmax`` gives the mean), or of their
    predictions for regression. The members must share a tokenizer."""

    def __init__(self, members: list[Runner], path: str) -> None:
        first = members[0]
        super().__init__(
            torch.nn.ModuleList([m.model for m in members]), first.tokenizer, first.task, path, first.recipe
        )
        self.members = members
        from .checks import vocab_difference

        for m in members[1:]:
            diff = vocab_difference(m.tokenizer, first.tokenizer)
            if diff is not None:
                raise ConfigError(
                    f"an ensemble's members must share a tokenizer: {m.path} and {first.path} differ ({diff})"
                )

    def predict(self, batch: Mapping[str, Any], **options: Any) -> Any:
        from .protocol import Prediction
        from .teachers import ensemble_logits

        logits = [m.predict(batch).logits for m in self.members]
        regression = bool(self.task and self.task.regression)
        return Prediction(ensemble_logits([z for z in logits if z is not None], regression))

    def onnx_graphs(self, batch: Mapping[str, Any], **options: Any) -> Any:
        raise ConfigError("an ensemble is not exported to ONNX as one model; export each member")

    def describe(self) -> dict[str, Any]:
        d = self.members[0].describe()
        return {
            **d,
            "params": sum(m.describe()["params"] for m in self.members),
            "members": len(self.members),
        }


# ----------------------------------------------------------------------------------------------- predict


class Predictor:
    """Predictions for raw text with a saved student: one dict per example (``label`` + ``probs``, or
    ``score`` for regression, plus whatever the runner adds, e.g. FastBERT's ``exit_layer``)."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        max_length: int = 128,
        device: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.runner = load_student(model_dir, device=device or "cpu")
        self.options = self.runner.check_options(dict(options or {}))
        self.runner.task = self.runner.task_for(
            self.options
        )  # e.g. a multi-task student's head: pairs, a score
        self.max_length = max_length
        self.is_pair = self.runner.is_pair()

    @torch.no_grad()
    def predict(self, texts: Sequence[tuple[str, ...]], batch_size: int = 32) -> Iterator[dict[str, Any]]:
        if not texts:
            return
        width = len(texts[0])
        bad = [i for i, t in enumerate(texts) if len(t) != width]
        if bad:
            raise ConfigError(
                f"examples {bad[:5]} have a different number of fields than the first ({width}); "
                "sentence pairs are tab-separated"
            )
        data = self.runner.encode(Examples(list(texts), None), self.max_length)
        collate = self.runner.collator()
        device = self.runner.device()
        for s in range(0, len(data), batch_size):  # type: ignore[arg-type]
            batch = _to(collate([data[i] for i in range(s, min(s + batch_size, len(data)))]), device)  # type: ignore[arg-type]
            yield from self.runner.rows(self.runner.predict(batch, **self.options))


__all__ = [
    "Predictor",
    "all_options",
    "batches_of",
    "eval_loop",
    "load_student",
    "read_recipe",
    "runner_class",
]
