"""Scores, sizes and speed: what a distilled student gained and lost against its teacher.

Every model is loaded and run through its method's runner (:func:`bertdistill.inference.load_student`) and
scored by the one eval loop; timing is :mod:`bertdistill.timing` (interleaved, medians); tables and plots
are :mod:`bertdistill.reporting`. Nothing here names a method: options such as FastBERT's ``speed`` are
passed to the runners that declare them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checks import check_teacher_labels, check_trained_head
from .config import ConfigError, DataConfig
from .data.loading import load_examples, resolve_task, subsample
from .data.tasks import TaskSpec, collapse_warning
from .inference import EnsembleRunner, batches_of, eval_loop, load_student
from .precision import with_precision
from .protocol import Runner
from .timing import make_batches, measure_speed


def size_on_disk_mb(path: str | os.PathLike[str]) -> float | None:
    p = Path(path)
    if not p.is_dir():
        return None
    files = [f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".onnx")]
    return sum(f.stat().st_size for f in files) / 2**20


def count_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def data_config(
    recipe: Mapping[str, Any], task: str | None, data_path: str | None, max_length: int
) -> DataConfig:
    """The data section to evaluate on: the student's recipe, with ``task`` / ``data_path`` overriding."""
    d = {k: v for k, v in dict(recipe.get("data") or {}).items() if k in DataConfig.__dataclass_fields__}
    if task:
        if d.get("task") != task:
            d = {k: v for k, v in d.items() if k not in ("path", "text_fields", "labels", "regression")}
        d["task"] = task
    if data_path:
        d["path"] = data_path
    if "task" not in d:
        raise ConfigError("no bertdistill.yaml to read the task from; pass --task (and --data)")
    d["max_length"] = max_length
    d.pop("max_train_examples", None)
    return DataConfig(**d)


def eval_examples(
    recipe: Mapping[str, Any],
    task: str | None,
    data_path: str | None,
    split: str,
    max_length: int,
    max_examples: int | None,
) -> tuple[TaskSpec, Any]:
    cfg = data_config(recipe, task, data_path, max_length)
    spec = resolve_task(cfg)
    ex = subsample(load_examples(cfg, spec, split), max_examples, 0)
    if ex.labels is None and (spec.labels or spec.regression):
        raise ConfigError(f"split {split!r} of {spec.name} has no labels; evaluate on a labelled split (dev)")
    return spec, ex


def _load(path: str | os.PathLike[str], task: str | None) -> Runner:
    """A saved student, or an ensemble written ``dir1+dir2+...`` (read as one model: the mean of the members'
    class probabilities, or of their predictions for regression)."""
    text = str(path)
    if "+" in text and not Path(text).exists():
        return EnsembleRunner([load_student(p, task) for p in text.split("+")], text)
    return load_student(path, task)


def _options_for(runner: Runner, options: Mapping[str, Any]) -> dict[str, Any]:
    known = {o.name for o in runner.options}
    return runner.check_options({k: v for k, v in options.items() if k in known})


def compare(
    teacher: str | os.PathLike[str],
    students: Sequence[str | os.PathLike[str]],
    task: str | None = None,
    data_path: str | None = None,
    split: str = "dev",
    max_length: int = 128,
    threads: int | None = None,
    n_latency: int = 200,
    timing: bool = True,
    labels: Sequence[str] | None = None,
    batch_size: int = 64,
    max_examples: int | None = None,
    throughput_batch: int = 32,
    n_throughput: int = 512,
    options: Mapping[str, Any] | None = None,
    precisions: Sequence[str] = ("fp32",),
) -> list[dict[str, Any]]:
    """One row per model (teacher first): metrics, params, size, latency, throughput; students also get
    ``retention`` (score / teacher score) and speed-ups against the teacher, measured in the same run.

    ``options`` (e.g. ``{"speed": 0.5}``) go to every model whose runner declares them; an option no model
    takes is an error. A runner whose options change the computation also times its ``reference`` (e.g.
    FastBERT at full depth) interleaved, giving ``reference_latency_speedup`` / ``reference_throughput_speedup``.

    ``precisions`` (``fp32``, ``bf16``, ``int8``; see :mod:`bertdistill.precision`): one row per student and
    precision (the teacher stays fp32); with no students, one row of the model per precision, the first being
    the reference the others' retention and speed-ups are measured against.
    """
    options = {k: v for k, v in dict(options or {}).items() if v is not None}
    paths = [teacher, *students]
    names = list(labels) if labels else [Path(str(p)).name for p in paths]
    if len(names) != len(paths):
        raise ConfigError(f"--labels gives {len(names)} names for {len(paths)} models")
    runners = [_load(p, task) for p in paths]
    if options:
        taken = {o.name for r in runners for o in r.options}
        unused = sorted(set(options) - taken)
        if unused:
            raise ConfigError(
                f"option(s) {unused} apply to none of these models: "
                + ", ".join(f"{n} ({type(r).__name__})" for n, r in zip(names, runners, strict=True))
            )
    precs = list(dict.fromkeys(precisions or ("fp32",)))
    # the teacher stays fp32 and each student gets a row per precision; with no students, the one model gets a
    # row per precision, the first being the reference of the others (with_precision checks each name)
    models = list(zip(names, paths, runners, strict=True))
    expanded, extra = (models[1:], precs) if students else (models[:1], precs[1:])
    tagged = [(*models[0], "fp32" if students else precs[0])]
    tagged += [(n if q == "fp32" else f"{n} [{q}]", p, r, q) for n, p, r in expanded for q in extra]
    names = [t[0] for t in tagged]
    paths = [t[1] for t in tagged]
    runners = [with_precision(t[2], t[3], _options_for(t[2], options)) for t in tagged]
    precision_of = [t[3] for t in tagged]
    opts = [_options_for(r, options) for r in runners]
    sections = [dict(r.eval_data(o)) for r, o in zip(runners, opts, strict=True)]
    # a model saved without a recipe (a plain HF dir) is scored on the data of the first one that has it
    shared = next((s for s in sections if s.get("task")), {})
    tasks = {str(s["task"]) for s in sections if s.get("task")}
    if task is None and len(tasks) > 1:
        raise ConfigError(
            f"these models were trained on different tasks ({', '.join(sorted(tasks))}): one table compares them on "
            "one task; give --task (and --data) to score them all on it, or compare each against its own teacher"
        )
    rows: list[dict[str, Any]] = []
    datas = []
    for name, path, runner, o, own in zip(names, paths, runners, opts, sections, strict=True):
        section = {"data": own if own.get("task") else shared}
        spec, ex = eval_examples(section, task, data_path, split, max_length, max_examples)
        runner.task = spec
        check_teacher_labels(
            runner,  # its model, or each member's of an ensemble
            spec,
            role="model",
            fix="evaluate it on the task it was trained for (--task, --data), or fine-tune it on this one",
        )
        check_trained_head(runner)
        data = runner.encode(ex, max_length)
        metrics = eval_loop(runner, batches_of(runner, data, batch_size), **o)
        shown = {k: v for k, v in o.items() if k in options}
        rows.append(
            {
                "name": name + runner.label(shown),
                "path": str(path),
                "task": spec.name,
                "split": split,
                "metric": runner.main_metric(),
                "score": metrics[runner.main_metric()],
                "metrics": metrics,
                "options": shown,
                "precision": precision_of[len(rows)],
                "size_mb": size_on_disk_mb(path),
                **runner.describe(),  # an ONNX-run model gives the size of its graphs
                "examples": len(data),  # type: ignore[arg-type]
            }
        )
        datas.append(data)
    if timing:
        fns, singles, bulks, owner = [], [], [], []
        for k, (runner, data, o) in enumerate(zip(runners, datas, opts, strict=True)):
            coll = runner.collator()
            one = make_batches(data, coll, 1, n_latency)
            many = make_batches(data, coll, throughput_batch, n_throughput)
            fns.append(runner.timed(**o))
            singles.append(one)
            bulks.append(many)
            owner.append((k, "model"))
            ref = runner.reference(**o) if rows[k]["options"] else None
            if ref is not None:
                fns.append(ref)
                singles.append(one)
                bulks.append(many)
                owner.append((k, "reference"))
        speeds = measure_speed(fns, singles, bulks, threads=threads)
        for (k, role), s in zip(owner, speeds, strict=True):
            if role == "model":
                rows[k].update(s)
            else:
                rows[k]["reference_latency_ms_median"] = s["latency_ms_median"]
                rows[k]["reference_throughput_per_s"] = s["throughput_per_s"]
        for r in rows:
            if "reference_latency_ms_median" in r:
                r["reference_latency_speedup"] = r["reference_latency_ms_median"] / r["latency_ms_median"]
                r["reference_throughput_speedup"] = r["throughput_per_s"] / r["reference_throughput_per_s"]
    for r in rows:
        warning = collapse_warning(r["name"], r["metrics"], r["metric"])
        if warning:
            r["warning"] = warning
    t = rows[0]
    for r in rows[1:]:
        r["retention"] = r["score"] / t["score"] if t["score"] else None
        r["param_ratio"] = t["params"] / r["params"]
        if timing:
            r["latency_speedup"] = t["latency_ms_median"] / r["latency_ms_median"]
            r["throughput_speedup"] = r["throughput_per_s"] / t["throughput_per_s"]
    return rows


def evaluate(
    model: str | os.PathLike[str],
    task: str | None = None,
    data_path: str | None = None,
    split: str = "dev",
    max_length: int = 128,
    batch_size: int = 64,
    timing: bool = False,
    threads: int | None = None,
    max_examples: int | None = None,
    n_latency: int = 200,
    precision: str = "fp32",
    **options: Any,
) -> dict[str, Any]:
    """Metrics of a saved model on a task split, its size, and (``timing``) its CPU latency / throughput, at
    ``precision`` (``fp32``, ``bf16`` autocast or dynamic ``int8``; :mod:`bertdistill.precision`).
    ``options`` are the inference options its method declares (e.g. FastBERT's ``speed``: early exit; the
    row then also has the mean exit layer, the FLOPs speed-up and, with ``timing``, the measured speed-up
    against the same model at full depth)."""
    return compare(
        model,
        [],
        task=task,
        data_path=data_path,
        split=split,
        max_length=max_length,
        threads=threads,
        timing=timing,
        batch_size=batch_size,
        max_examples=max_examples,
        n_latency=n_latency,
        options=options,
        precisions=(precision,),
    )[0]


def print_table(rows: list[dict[str, Any]], teacher: dict[str, Any] | None) -> None:
    from .reporting import print_table as _print

    _print(rows, teacher)


def plot_score_vs_latency(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    from .reporting import plot_score_vs_latency as _plot

    _plot(rows, path)


__all__ = ["compare", "count_params", "evaluate", "plot_score_vs_latency", "print_table", "size_on_disk_mb"]
