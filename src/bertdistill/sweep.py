"""``bertdistill sweep``: a grid of overrides on one recipe, each point scored on a slice of *train*, never dev.

Every point of the grid (the product of the ``--grid KEY=V1,V2`` axes) is the recipe plus those overrides, trained
once per seed with ``data.selection_fraction`` set (default 0.1): the run holds that seeded slice of the training
examples out of training and evaluates on it instead of dev (:func:`bertdistill.data.loading.run_eval_examples`),
so model selection — within a run and across the grid — never sees dev. Points are ranked by the mean over seeds
of the main metric on the slice. Each run goes through :func:`bertdistill.training.runs.run_or_reuse`: a killed
sweep, run again with the same arguments, reuses finished runs and resumes unfinished ones from their checkpoints.

A grid is a plain product: the runs are independent and sequential, their state lives in their run dirs, and the
ranking is a mean, so no tuning library is involved (docs/sweep.md says why).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, RunConfig

DEFAULT_SELECTION_FRACTION = 0.1
RESERVED = {
    "train.seed": "use --seeds",
    "output_dir": "the sweep names each run's dir",
    "data.selection_fraction": "use --selection-fraction",
}
"""Keys a ``--grid`` axis may not vary, and what to use instead."""


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[str, ...]


@dataclass
class Point:
    """One grid point: its overrides and its runs, one per seed."""

    overrides: dict[str, str]
    """As given on the command line (key → value text)."""
    values: dict[str, Any] = field(default_factory=dict)
    """The same, as the resolved config types them."""
    runs: list[dict[str, Any]] = field(default_factory=list)
    """Per seed: ``seed``, ``score``, ``steps``, ``dir``, ``reused``."""

    @property
    def scores(self) -> list[float]:
        return [r["score"] for r in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else None

    def label(self) -> str:
        return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.overrides.items())


# ----------------------------------------------------------------------------------------------- the grid


def _split_values(text: str) -> list[str]:
    """Comma-separated values; commas inside ``[...]`` / ``{...}`` belong to the value (``student.layers=[0,2]``)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def parse_grid(specs: Sequence[str], check: Callable[[list[str]], Any]) -> list[Axis]:
    """The axes of ``--grid KEY=V1,V2,...`` specs; ``check(overrides)`` builds a config with them (a
    ConfigError for an unknown key or a value of the wrong type). Every problem is one line naming the spec."""
    if not specs:
        raise ConfigError("sweep: give at least one --grid KEY=V1,V2 (e.g. --grid method.temperature=1,2,4)")
    axes: list[Axis] = []
    for spec in specs:
        key, eq, rest = spec.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(
                f"--grid {spec!r} must look like section.key=v1,v2,... (e.g. method.temperature=1,2,4)"
            )
        if key in RESERVED:
            raise ConfigError(f"--grid {key}: not a grid axis; {RESERVED[key]}")
        if any(a.key == key for a in axes):
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid {key}=v1,v2")
        values = _split_values(rest)
        if not rest.strip() or any(v == "" for v in values):
            raise ConfigError(f"--grid {spec!r}: empty value(s); give a comma-separated list, e.g. {key}=1,2")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {spec!r}: a value is repeated")
        for v in values:
            try:
                check([f"{key}={v}"])
            except ConfigError as e:
                raise ConfigError(f"--grid {key}={v}: {e}") from None
        axes.append(Axis(key, tuple(values)))
    return axes


def grid_points(axes: Sequence[Axis]) -> list[dict[str, str]]:
    """The product of the axes, in order (the last axis varies fastest)."""
    return [
        dict(zip([a.key for a in axes], combo, strict=True))
        for combo in itertools.product(*(a.values for a in axes))
    ]


def point_dir_name(overrides: dict[str, str]) -> str:
    """A run-dir name made of the point's values (not its position: a grid with another axis order or more
    values finds the runs it shares with the last one)."""
    tails = [k.rsplit(".", 1)[-1] for k in overrides]
    keys = tails if len(set(tails)) == len(tails) else list(overrides)
    name = "_".join(f"{k}={v}" for k, v in zip(keys, overrides.values(), strict=True))
    name = re.sub(r"[^A-Za-z0-9._=+-]", "-", name)
    if len(name) > 100:
        name = name[:80] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def _value_at(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg.to_dict()
    for part in key.split("."):
        node = node[part]
    return node


# ----------------------------------------------------------------------------------------------- running


@dataclass
class SweepResult:
    points: list[Point]
    best: Point
    metric: str
    selection_fraction: float
    record: dict[str, Any]
    """What ``sweep.json`` holds."""


def sweep(
    recipe: str | dict[str, Any],
    grid: Sequence[str],
    output: str | Path,
    *,
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    selection_fraction: float | None = None,
    final_dev: bool = False,
    quiet: bool = True,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Train every grid point at every seed into ``output/runs/<point>/seed<seed>`` (or reuse / resume it), rank
    the points by their mean score on the selection slice and write ``sweep.json``, ``sweep.png`` and
    ``best.yaml`` into ``output``. ``final_dev``: also score the best point's models on dev, once, after the
    choice (reported, never used to choose)."""
    from .data.loading import resolve_task
    from .recipes import load_config, read_recipe
    from .training import runs

    raw = read_recipe(recipe) if not isinstance(recipe, dict) else recipe
    base = load_config(raw, list(overrides))
    fraction = next(
        f
        for f in (selection_fraction, base.data.selection_fraction, DEFAULT_SELECTION_FRACTION)
        if f is not None
    )
    common = [*overrides, f"data.selection_fraction={fraction}"]
    load_config(raw, common)  # a bad fraction is its own error, not one of the first grid value
    axes = parse_grid(grid, lambda extra: load_config(raw, [*common, *extra]))
    seed_list = list(seeds) if seeds else [base.train.seed]
    if len(set(seed_list)) != len(seed_list):
        raise ConfigError(f"--seeds {seed_list}: a seed is repeated")
    if final_dev and not base.data.eval_split:
        raise ConfigError("--final-dev: the recipe has no data.eval_split to score the chosen point on")
    metric = base.train.metric_for_best or resolve_task(base.data).main_metric
    out = Path(output)
    points = [Point(o) for o in grid_points(axes)]
    total, n = len(points) * len(seed_list), 0
    for seed in seed_list:  # seed-major: a partial sweep has scored every point once
        for p in points:
            n += 1
            run_dir = out / "runs" / point_dir_name(p.overrides) / f"seed{seed}"
            cfg = load_config(
                raw, [*common, *(f"{k}={v}" for k, v in p.overrides.items()), f"train.seed={seed}"]
            )
            p.values = {k: _value_at(cfg, k) for k in p.overrides}
            log(f"[{n}/{total}] {p.label()} seed {seed} -> {run_dir}")
            done = runs.run_or_reuse(cfg, run_dir, quiet=quiet, log=log)
            metrics = json.loads((done.dir / runs.METRICS_FILE).read_text())
            if metric not in metrics:
                raise ConfigError(
                    f"{done.dir}: metrics.json has no {metric!r} (it has {sorted(metrics)}); set "
                    "train.metric_for_best to one of them"
                )
            steps = runs.stage_steps(runs._read_log(done.dir))
            p.runs.append(
                {
                    "seed": seed,
                    "score": float(metrics[metric]),
                    "steps": sum(steps.values()) if steps else int(metrics.get("step", 0)),
                    "dir": str(done.dir),
                    "reused": done.reused,
                }
            )
    best = max(points, key=lambda p: p.mean)  # ties: the first in grid order
    best_cfg = load_config(
        raw,
        [
            *overrides,
            *(f"{k}={v}" for k, v in best.overrides.items()),
            f"train.seed={seed_list[0]}",
            "data.selection_fraction=null",
        ],
    )
    record = _record(recipe, axes, seed_list, overrides, fraction, metric, points, best)
    if final_dev:
        record["final_dev"] = _final_dev(best, best_cfg, metric)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(record, indent=1) + "\n")
    write_best(out / "best.yaml", best_cfg, best, metric, fraction, len(points), seed_list)
    plot(points, axes, metric, out / "sweep.png")
    return SweepResult(points, best, metric, fraction, record)


def _record(
    recipe: Any,
    axes: Sequence[Axis],
    seeds: list[int],
    overrides: Sequence[str],
    fraction: float,
    metric: str,
    points: list[Point],
    best: Point,
) -> dict[str, Any]:
    ranked = sorted(points, key=lambda p: -p.mean)
    return {
        "recipe": recipe if isinstance(recipe, str) else "inline",
        "grid": {a.key: list(a.values) for a in axes},
        "set": list(overrides),
        "seeds": seeds,
        "metric": metric,
        "selection_fraction": fraction,
        "scored_on": (
            f"a seeded {fraction:g} of the training split held out from training (data.selection_fraction); "
            "dev was not read"
        ),
        "points": [
            {
                "rank": ranked.index(p) + 1,
                "overrides": p.values,
                "seeds": [r["seed"] for r in p.runs],
                "scores": p.scores,
                "mean": p.mean,
                "std": p.std,
                "steps": [r["steps"] for r in p.runs],
                "runs": [r["dir"] for r in p.runs],
            }
            for p in points
        ],
        "best": {"overrides": best.values, "mean": best.mean, "recipe": "best.yaml"},
        "final_dev": None,
    }


def _final_dev(best: Point, cfg: RunConfig, metric: str) -> dict[str, Any]:
    """The best point's models scored on dev, once, after the choice: a held-out number, not a selection."""
    from .evaluation import evaluate

    d = cfg.data
    scores = [
        float(
            evaluate(
                r["dir"],
                task=d.task,
                data_path=d.path,
                split=d.eval_split,
                max_length=d.max_length,
                max_examples=d.max_eval_examples,
            )["score"]
        )
        for r in best.runs
    ]
    return {
        "split": d.eval_split,
        "metric": metric,
        "scores": scores,
        "mean": statistics.fmean(scores),
        "note": (
            "the chosen point's models (trained without the selection slice), scored on dev once after the "
            "choice; dev played no part in choosing"
        ),
    }


# ----------------------------------------------------------------------------------------------- outputs


def write_best(
    path: Path, cfg: RunConfig, best: Point, metric: str, fraction: float, n_points: int, seeds: list[int]
) -> None:
    """``best.yaml``: the chosen point's recipe fully resolved, as ``bertdistill distill`` reads it — without
    the selection slice (it trains on all the training data and evaluates on dev) — and a comment saying how
    it was chosen."""
    spread = f" ± {best.std:.4f}" if best.std is not None else ""
    head = [
        "# The best point of a `bertdistill sweep`, fully resolved: run it with `bertdistill distill best.yaml`.",
        f"# Chosen among {n_points} grid points by the mean {metric} over seed(s) {seeds} ({best.mean:.4f}{spread})",
        f"# on a seeded {fraction:g} of the training split held out from training (data.selection_fraction);",
        "# dev was not used to choose. This recipe trains on the whole training split and evaluates on dev.",
        f"# Chosen overrides: {' '.join(f'{k}={v}' for k, v in best.overrides.items())}",
    ]
    path.write_text("\n".join(head) + "\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def table(result: SweepResult) -> str:
    """The points ranked by mean score, as a Markdown table."""
    pts = sorted(result.points, key=lambda p: -p.mean)
    keys = list(pts[0].overrides)
    head = ["rank", *keys, f"{result.metric} (mean)", "std", "per seed", "steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, p in enumerate(pts, 1):
        cells = [
            str(i) + (" (best)" if p is result.best else ""),
            *p.overrides.values(),
            f"{p.mean:.4f}",
            f"{p.std:.4f}" if p.std is not None else "-",
            " ".join(f"{s:.4f}" for s in p.scores),
            str(p.runs[0]["steps"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    note = f"Scored on a held-out {result.selection_fraction:g} of train (data.selection_fraction); dev not read."
    fd = result.record.get("final_dev")
    if fd:
        note += (
            f"\nFinal dev (the chosen point only, once, after the choice): {fd['metric']} {fd['mean']:.4f} "
            f"({' '.join(f'{s:.4f}' for s in fd['scores'])})"
        )
    return "\n".join(lines) + "\n\n" + note


def plot(points: list[Point], axes: Sequence[Axis], metric: str, path: Path) -> None:
    """Score against the first axis, one line per combination of the other axes; error bars = seed std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, rest = axes[0], axes[1:]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(len(first.values)))
    for combo in itertools.product(*(a.values for a in rest)):
        others = dict(zip([a.key for a in rest], combo, strict=True))
        line = [next(p for p in points if p.overrides == {first.key: v, **others}) for v in first.values]
        label = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in others.items()) or None
        ax.errorbar(
            xs, [p.mean for p in line], yerr=[p.std or 0.0 for p in line], marker="o", capsize=3, label=label
        )
    ax.set_xticks(xs, list(first.values))
    ax.set_xlabel(first.key)
    ax.set_ylabel(f"{metric} on the selection slice (mean over seeds)")
    ax.set_title("sweep (scored on held-out train, not dev)")
    ax.grid(alpha=0.3)
    if rest:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["Axis", "Point", "SweepResult", "grid_points", "parse_grid", "point_dir_name", "sweep", "table"]
