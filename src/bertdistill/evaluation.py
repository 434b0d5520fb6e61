"""Scores, sizes and speed: what a distilled student gained and lost against its teacher.

Timing rules (the machine is shared and noisy): fixed thread count, warm-up first, models timed
*interleaved* (sentence by sentence for latency, round by round for throughput) so that load spikes hit
every model alike, medians reported. Timings cover the model forward only (inputs pre-tokenised).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .config import ConfigError, DataConfig
from .data.loading import Collator, TokenizedDataset, load_examples, resolve_task, subsample, tokenize
from .data.tasks import TaskSpec
from .hub import from_pretrained
from .methods.base import metrics_from_logits


@dataclass
class LoadedModel:
    name: str
    path: str
    model: nn.Module
    tokenizer: Any
    recipe: dict[str, Any]


def load_model(path: str | os.PathLike[str], name: str | None = None) -> LoadedModel:
    """A saved model dir (or hub name) as an eval-mode sequence classifier, with its tokenizer and recipe."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    p = str(path)
    model = from_pretrained(AutoModelForSequenceClassification, p).eval()
    tok = from_pretrained(AutoTokenizer, p)
    recipe: dict[str, Any] = {}
    cfg_file = Path(p) / "bertdistill.yaml"
    if cfg_file.is_file():
        recipe = yaml.safe_load(cfg_file.read_text()) or {}
    return LoadedModel(name or Path(p).name, p, model, tok, recipe)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_on_disk_mb(path: str | os.PathLike[str]) -> float | None:
    p = Path(path)
    if not p.is_dir():
        return None
    files = [f for f in p.iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files) / 2**20


def _data_config(lm: LoadedModel, task: str | None, data_path: str | None, max_length: int) -> DataConfig:
    d = dict(lm.recipe.get("data") or {})
    d = {k: v for k, v in d.items() if k in DataConfig.__dataclass_fields__}
    if task:
        if d.get("task") != task:
            d = {k: v for k, v in d.items() if k not in ("path",)}
        d["task"] = task
    if data_path:
        d["path"] = data_path
    if "task" not in d:
        raise ConfigError(f"{lm.path}: no bertdistill.yaml to read the task from; pass --task (and --data)")
    d["max_length"] = max_length
    d.pop("max_train_examples", None)
    return DataConfig(**d)


def eval_dataset(
    lm: LoadedModel,
    task: str | None,
    data_path: str | None,
    split: str,
    max_length: int,
    max_examples: int | None,
) -> tuple[TaskSpec, TokenizedDataset, DataConfig]:
    cfg = _data_config(lm, task, data_path, max_length)
    spec = resolve_task(cfg)
    ex = subsample(load_examples(cfg, spec, split), max_examples, 0)
    if ex.labels is None:
        raise ConfigError(f"split {split!r} of {spec.name} has no labels; evaluate on a labelled split (dev)")
    return spec, tokenize(ex, lm.tokenizer, max_length), cfg


@torch.no_grad()
def score(
    model: nn.Module,
    data: TokenizedDataset,
    task: TaskSpec,
    pad_id: int,
    batch_size: int = 64,
    speed: float | None = None,
) -> dict[str, float]:
    """Task metrics; with ``speed`` (early-exit models) also the mean exit layer and the FLOPs speed-up."""
    coll = Collator(pad_id, regression=task.regression)
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    logits = torch.zeros((len(data), task.num_labels))
    exits, flops, full = [], 0.0, 0.0
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = coll([data[i] for i in idx])
        if speed is None:
            logits[torch.tensor(idx)] = model(**batch["inputs"]).logits.float()
            continue
        from .early_exit import early_exit, full_flops

        res = early_exit(model, batch["inputs"], speed)
        logits[torch.tensor(idx)] = res.logits.float()
        exits.append(res.exit_layer.float())
        flops += float(res.flops.sum())
        full += sum(full_flops(model, int(t)) for t in batch["inputs"]["attention_mask"].sum(-1).tolist())
    labels = torch.tensor(data.labels, dtype=torch.float if task.regression else torch.long)
    metrics = metrics_from_logits(task, logits, labels)
    if speed is not None:
        metrics["mean_exit_layer"] = float(torch.cat(exits).mean())
        metrics["flops_speedup"] = full / flops
    return metrics


# ----------------------------------------------------------------------------------------------- timing


def _batches(data: TokenizedDataset, pad_id: int, batch_size: int, n: int) -> list[dict[str, torch.Tensor]]:
    coll = Collator(pad_id)
    idx = list(range(min(n, len(data))))
    return [
        coll([data[i] for i in idx[s : s + batch_size]])["inputs"] for s in range(0, len(idx), batch_size)
    ]


@torch.inference_mode()
def measure_speed(
    models: Sequence[Callable[..., Any]],
    inputs: Sequence[TokenizedDataset],
    pad_ids: Sequence[int],
    n_latency: int = 200,
    throughput_batch: int = 32,
    n_throughput: int = 512,
    rounds: int = 3,
    threads: int | None = None,
    warmup: int = 10,
) -> list[dict[str, float]]:
    """Batch-1 latency (median, p90 over ``n_latency`` sentences) and batch-``throughput_batch`` samples/s
    (median of ``rounds`` passes over ``n_throughput`` sentences), all models timed interleaved."""
    """``models`` are modules or any callables, called as ``m(**inputs)``."""
    if threads:
        torch.set_num_threads(threads)
    for m in models:
        if isinstance(m, nn.Module):
            m.eval()
    singles = [_batches(d, p, 1, n_latency) for d, p in zip(inputs, pad_ids, strict=True)]
    bulks = [_batches(d, p, throughput_batch, n_throughput) for d, p in zip(inputs, pad_ids, strict=True)]
    for m, s in zip(models, singles, strict=True):  # warm-up
        for b in s[:warmup]:
            m(**b)
    lat: list[list[float]] = [[] for _ in models]
    n = min(len(s) for s in singles)
    for i in range(n):
        order = list(range(len(models)))
        if i % 2:
            order.reverse()  # alternate who goes first
        for k in order:
            t0 = time.perf_counter()
            models[k](**singles[k][i])
            lat[k].append(time.perf_counter() - t0)
    thr: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for k, m in enumerate(models):
            t0 = time.perf_counter()
            count = 0
            for b in bulks[k]:
                m(**b)
                count += b["input_ids"].shape[0]
            thr[k].append(count / (time.perf_counter() - t0))
    out = []
    for k in range(len(models)):
        arr = np.array(lat[k]) * 1000
        out.append(
            {
                "latency_ms_median": float(np.median(arr)),
                "latency_ms_p90": float(np.percentile(arr, 90)),
                "throughput_per_s": float(statistics.median(thr[k])),
                "latency_sentences": len(arr),
                "threads": torch.get_num_threads(),
            }
        )
    return out


# ----------------------------------------------------------------------------------------------- API


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
    speed: float | None = None,
    n_latency: int = 200,
) -> dict[str, Any]:
    """Metrics of a saved model on a task split, its size, and (``timing``) its CPU latency/throughput.

    ``speed`` (FastBERT models): early-exit inference at that threshold; the row then also has the mean exit
    layer, the FLOPs speed-up and, with ``timing``, the measured speed-up against the same model at full
    depth without branches (its teacher), timed interleaved.
    """
    kw: dict[str, Any] = dict(
        task=task,
        data_path=data_path,
        split=split,
        max_length=max_length,
        threads=threads,
        timing=timing,
        batch_size=batch_size,
        max_examples=max_examples,
        n_latency=n_latency,
    )
    if speed is None:
        return compare(model, [], **kw)[0]
    return early_exit_row(load_model(model), speed, **kw)


def early_exit_row(
    lm: LoadedModel,
    speed: float,
    task: str | None = None,
    data_path: str | None = None,
    split: str = "dev",
    max_length: int = 128,
    threads: int | None = None,
    timing: bool = True,
    batch_size: int = 64,
    max_examples: int | None = None,
    n_latency: int = 200,
) -> dict[str, Any]:
    """One evaluation row of an early-exit model at ``speed`` (see :func:`evaluate`)."""
    from .early_exit import early_exit

    if not hasattr(lm.model, "branches"):
        raise ConfigError(
            f"{lm.path} is not an early-exit (fastbert) model; --speed applies to fastbert students"
        )
    spec, data, _ = eval_dataset(lm, task, data_path, split, max_length, max_examples)
    pad = lm.tokenizer.pad_token_id or 0
    metrics = score(lm.model, data, spec, pad, batch_size, speed=speed)
    cfg: Any = lm.model.config
    row: dict[str, Any] = {
        "name": f"{lm.name}@speed={speed:g}",
        "path": lm.path,
        "task": spec.name,
        "split": split,
        "metric": spec.main_metric,
        "score": metrics[spec.main_metric],
        "metrics": metrics,
        "speed": speed,
        "params": count_params(lm.model),
        "size_mb": size_on_disk_mb(lm.path),
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "examples": len(data),
        "mean_exit_layer": metrics["mean_exit_layer"],
        "flops_speedup": metrics["flops_speedup"],
    }
    if timing:
        m = lm.model

        def full(**inputs: torch.Tensor) -> Any:
            return m(**inputs, branches=False)

        def adaptive(**inputs: torch.Tensor) -> Any:
            return early_exit(m, inputs, speed)

        base, fast = measure_speed(
            [full, adaptive], [data, data], [pad, pad], n_latency=n_latency, threads=threads
        )
        row.update(fast)
        row["latency_speedup"] = base["latency_ms_median"] / fast["latency_ms_median"]
        row["throughput_speedup"] = fast["throughput_per_s"] / base["throughput_per_s"]
        row["full_depth_latency_ms"] = base["latency_ms_median"]
        row["full_depth_throughput_per_s"] = base["throughput_per_s"]
    return row


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
) -> list[dict[str, Any]]:
    """One row per model (teacher first): metrics, params, size, latency, throughput; students also get
    ``retention`` (score / teacher score) and speed-ups against the teacher, measured in the same run."""
    paths = [teacher, *students]
    names = list(labels) if labels else [Path(str(p)).name for p in paths]
    if len(names) != len(paths):
        raise ConfigError(f"--labels gives {len(names)} names for {len(paths)} models")
    loaded = [load_model(p, n) for p, n in zip(paths, names, strict=True)]
    rows: list[dict[str, Any]] = []
    datas = []
    spec: TaskSpec | None = None
    for lm in loaded:
        spec_i, data, _ = eval_dataset(
            lm, task or _task_of(loaded), data_path, split, max_length, max_examples
        )
        spec = spec or spec_i
        pad = lm.tokenizer.pad_token_id or 0
        metrics = score(lm.model, data, spec_i, pad, batch_size)
        cfg = lm.model.config
        rows.append(
            {
                "name": lm.name,
                "path": lm.path,
                "task": spec_i.name,
                "split": split,
                "metric": spec_i.main_metric,
                "score": metrics[spec_i.main_metric],
                "metrics": metrics,
                "params": count_params(lm.model),
                "size_mb": size_on_disk_mb(lm.path),
                "layers": getattr(cfg, "num_hidden_layers", None),
                "hidden": getattr(cfg, "hidden_size", None),
                "examples": len(data),
            }
        )
        datas.append(data)
    if timing:
        speeds = measure_speed(
            [lm.model for lm in loaded],
            datas,
            [lm.tokenizer.pad_token_id or 0 for lm in loaded],
            n_latency=n_latency,
            threads=threads,
        )
        for r, s in zip(rows, speeds, strict=True):
            r.update(s)
    t = rows[0]
    for r in rows[1:]:
        r["retention"] = r["score"] / t["score"] if t["score"] else None
        r["param_ratio"] = t["params"] / r["params"]
        if timing:
            r["latency_speedup"] = t["latency_ms_median"] / r["latency_ms_median"]
            r["throughput_speedup"] = r["throughput_per_s"] / t["throughput_per_s"]
    return rows


def _task_of(loaded: list[LoadedModel]) -> str | None:
    for lm in loaded:
        t = (lm.recipe.get("data") or {}).get("task")
        if t:
            return str(t)
    return None


def print_table(rows: list[dict[str, Any]], teacher: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    timing = "latency_ms_median" in rows[0]
    table = Table(title=f"{rows[0]['task']} ({rows[0]['split']}, {rows[0]['examples']} examples)")
    cols = ["model", rows[0]["metric"], "params", "size MB", "layers×hidden"]
    early = "mean_exit_layer" in rows[0]
    if early:
        cols += ["speed", "mean exit layer", "FLOPs speed-up"]
    if timing:
        cols += ["latency b1 ms (p50/p90)", "b32 samples/s"]
    if early and timing:
        cols += ["measured speed-up b1 / b32"]
    if teacher is not None and len(rows) > 1:
        cols += ["retention", "latency speed-up", "throughput speed-up"]
    for c in cols:
        table.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        cells = [
            r["name"],
            f"{r['score']:.4f}",
            f"{r['params'] / 1e6:.1f}M",
            f"{r['size_mb']:.1f}" if r.get("size_mb") else "-",
            f"{r['layers']}×{r['hidden']}",
        ]
        if early:
            cells += [f"{r['speed']:g}", f"{r['mean_exit_layer']:.2f}", f"{r['flops_speedup']:.2f}×"]
        if timing:
            cells += [
                f"{r['latency_ms_median']:.1f} / {r['latency_ms_p90']:.1f}",
                f"{r['throughput_per_s']:.0f}",
            ]
        if early and timing:
            cells += [f"{r['latency_speedup']:.2f}× / {r['throughput_speedup']:.2f}×"]
        if teacher is not None and len(rows) > 1:
            if r is teacher:
                cells += ["100.0%", "1.00×", "1.00×"]
            else:
                cells += [
                    f"{100 * r['retention']:.1f}%" if r.get("retention") is not None else "-",
                    f"{r['latency_speedup']:.2f}×" if timing else "-",
                    f"{r['throughput_speedup']:.2f}×" if timing else "-",
                ]
        table.add_row(*cells)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def plot_score_vs_latency(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(rows):
        ax.scatter(r["latency_ms_median"], r["score"], s=40 + r["params"] / 5e5)
        # stagger the labels: students often sit close together
        ax.annotate(
            r["name"],
            (r["latency_ms_median"], r["score"]),
            textcoords="offset points",
            xytext=(6, 6 + 11 * (i % 3)),
            fontsize=8,
        )
    ax.set_xlabel("CPU latency, batch 1, median (ms)")
    ax.set_ylabel(f"{rows[0]['metric']} ({rows[0]['task']} {rows[0]['split']})")
    ax.set_title("score vs latency (marker size ~ parameters)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
