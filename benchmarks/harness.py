"""The benchmark harness: "seed loop, run or reuse a finished run, compare, average" written once.

Every script under ``benchmarks/`` is a short table of :class:`Row` s run through this module (run them as
``python -m benchmarks.<script>`` from the repository root; ``benchmarks`` is a package, so nothing touches
``sys.path``):

* :func:`run_or_reuse` trains one resolved config through the CLI's code path unless ``out_dir`` already holds
  a finished run of the same full config and unchanged inputs (reused), resumes an unfinished one, and retrains
  or refuses one of another config — :func:`bertdistill.training.runs.run_or_reuse`, which ``bertdistill
  sweep`` shares — and reads the run back as a :class:`RunRecord`.
* :func:`run_rows` is the seed loop over a table of rows; :func:`stats` / :func:`score_fields` give every score
  as mean, sample std and the per-seed list.
* :func:`time_models` scores the teacher and the students and times them in one interleaved run
  (:func:`bertdistill.evaluation.compare` → :func:`bertdistill.timing.measure_speed`, medians).
* :func:`run_table` is all of it for a distillation table; :func:`provenance` and :func:`write_result` give
  every result file the fields of :mod:`benchmarks.schema` and refuse to write an invalid one.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as _dt
import functools
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.gitinfo import git
from benchmarks.schema import SCHEMA_VERSION, check, sample_std
from bertdistill.training.runs import (
    CONFIG_FILE,
    INPUTS_FILE,
    LOG_FILE,
    METRICS_FILE,
    ConfigMismatchError,
    OnMismatch,
    _read_log,
    comparable,
    config_diff,
    fingerprint,
    input_fingerprints,
    inputs_diff,
    is_finished,
    stage_steps,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = Path(os.environ.get("BERTDISTILL_BENCH_DIR", "~/.cache/bertdistill/bench")).expanduser()


def repo_path(p: str | Path) -> str:
    """``p`` as result files write it: relative to the repository when it lies inside it, else as given."""
    p = Path(p)
    return str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else str(p)


def _shared_data() -> Path:
    """The shared data dir: ``$BERTDISTILL_SHARED_DATA``, else the first ``shared/data`` above the checkout."""
    env = os.environ.get("BERTDISTILL_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    for parent in ROOT.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return ROOT.parent / "shared" / "data"


SHARED = _shared_data()


# ----------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    """One line of a benchmark table: a recipe plus overrides, trained once per seed.

    ``recipe`` is a shipped recipe name (``kd/sst2``), a YAML path (relative to the repository root or absolute)
    or a recipe dict; its data is made local (:func:`with_shared_data`): a benchmark never reads the hub. ``finetune``
    swaps the recipe's method for plain fine-tuning (``method: {name: finetune}``): the no-KD baseline with
    the same student init, data, steps and seeds. ``overrides`` may contain ``{seed}``. ``seeds`` narrows the
    table's seeds for this row; ``baseline`` names the row whose scores are this row's ``no_kd_score``
    (default: the table's)."""

    name: str
    recipe: str | Path | Mapping[str, Any]
    overrides: tuple[str, ...] = ()
    finetune: bool = False
    seeds: tuple[int, ...] | None = None
    baseline: str | None = None
    label: str | None = None
    """How the recipe is shown in the result (default: its path, or ``inline`` for a dict)."""

    def no_kd(self, name: str = "no_kd") -> Row:
        """This row without distillation (same recipe with ``method: finetune``)."""
        return dataclasses.replace(self, name=name, finetune=True, baseline=name)

    def source(self) -> dict[str, Any]:
        """The recipe as a dict, its data in :data:`SHARED` (the method swapped for ``finetune`` when asked)."""
        from bertdistill.config import deep_copy_dicts
        from bertdistill.recipes import read_recipe

        if isinstance(self.recipe, Mapping):
            raw = deep_copy_dicts(dict(self.recipe))
        else:
            path = Path(self.recipe)
            local = path if path.is_absolute() else ROOT / path
            raw = read_recipe(local if local.is_file() else self.recipe)
        if self.finetune:
            from bertdistill.registry import get_method

            method = (raw.get("method") or {}).get("name")
            if method:  # the student that method starts from (pkd: its pre-trained init), fine-tuned
                raw["student"] = get_method(method).control_student(raw)
            raw["method"] = {"name": "finetune"}
        return with_shared_data(raw)

    def recipe_label(self) -> str:
        if self.label:
            base = self.label
        elif isinstance(self.recipe, Mapping):
            base = "inline"
        else:
            base = repo_path(self.recipe)
        return f"finetune:{base}" if self.finetune else base

    def config(self, seed: int, common: Sequence[str] = (), out_dir: str | Path | None = None) -> Any:
        """The resolved :class:`~bertdistill.config.RunConfig` of this row at ``seed``: the recipe, then the
        table's ``common`` overrides, the row's own, ``train.seed`` and ``output_dir``."""
        from bertdistill import load_config

        overrides = [*common, *(o.replace("{seed}", str(seed)) for o in self.overrides), f"train.seed={seed}"]
        if out_dir is not None:
            overrides.append(f"output_dir={out_dir}")
        return load_config(self.source(), overrides)


def with_shared_data(raw: Any) -> Any:
    """``raw`` (a recipe, or any part of one) with its data pointed at :data:`SHARED`: every section naming a
    GLUE task without a ``path`` (``data``, an ``mtdnn_kd`` task entry) gets the task's folder there, and
    ``${BERTDISTILL_DATA_DIR}`` becomes :data:`SHARED` — so that a benchmark reads the files it records, never
    the HF hub, and its resolved config says which."""
    from bertdistill.data.local import GLUE_DIRS, PLACEHOLDER

    if isinstance(raw, list):
        return [with_shared_data(v) for v in raw]
    if isinstance(raw, str):
        return raw.replace(PLACEHOLDER, str(SHARED))
    if not isinstance(raw, dict):
        return raw
    out = {k: with_shared_data(v) for k, v in raw.items()}
    if out.get("path") is None and str(out.get("task", "")) in GLUE_DIRS:
        out["path"] = str(SHARED / GLUE_DIRS[str(out["task"])])
    return out


def parse_row(spec: str) -> Row:
    """``NAME=RECIPE[:KEY=VALUE,KEY=VALUE...]``; ``RECIPE`` may be ``finetune:PATH`` (the no-KD baseline)."""
    name, _, rest = spec.partition("=")
    if not name or not rest:
        raise SystemExit(f"row {spec!r}: expected NAME=RECIPE[:KEY=VALUE,...]")
    finetune = rest.startswith("finetune:")
    if finetune:
        rest = rest[len("finetune:") :]
    recipe, _, ovr = rest.partition(":")
    return Row(name, recipe, tuple(o for o in ovr.split(",") if o), finetune=finetune)


# ----------------------------------------------------------------------------------------------- one run


@dataclass
class RunRecord:
    """A finished run, trained now or reused."""

    dir: Path
    config: Any
    """Its resolved RunConfig."""
    metrics: dict[str, Any]
    """``metrics.json``: the loop's selected model (the final one, or the best on dev when it evaluates more
    than once)."""
    final_metrics: dict[str, Any]
    """The last evaluation in the log (the final model)."""
    evaluations: int
    steps: int
    stage_steps: dict[str, int]
    sec_per_step: float | None
    reused: bool
    train_seconds: float | None = None
    """Wall time of the training in this process (``None`` when reused)."""

    @property
    def seed(self) -> int:
        return int(self.config.train.seed)

    def score(self, metric: str) -> float:
        return float(self.metrics[metric])


def read_run(out_dir: str | Path, config: Any | None = None, *, reused: bool = True) -> RunRecord:
    """The record of a finished run (its config read from ``bertdistill.yaml`` unless given)."""
    from bertdistill import load_config

    out = Path(out_dir)
    cfg = config if config is not None else load_config(out / CONFIG_FILE)
    metrics = json.loads((out / METRICS_FILE).read_text())
    log = _read_log(out)
    evals = [r for r in log if "eval" in r]
    per_step = [r["sec_per_step"] for r in log if "sec_per_step" in r]
    steps = stage_steps(log)
    return RunRecord(
        dir=out,
        config=cfg,
        metrics=metrics,
        final_metrics={"step": evals[-1]["step"], **evals[-1]["eval"]} if evals else metrics,
        evaluations=len(evals),
        steps=sum(steps.values()) if steps else int(metrics.get("step", 0)),
        stage_steps=steps,
        sec_per_step=statistics.median(per_step) if per_step else None,
        reused=reused,
    )


def run_pinned(
    commands: Mapping[str, Sequence[str]],
    jobs: int,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Run each command (label → argv) in a process of its own, ``jobs`` at a time; with ``jobs`` > 1 each is
    pinned to a core no other running one holds. Returns the labels whose process failed."""
    import subprocess
    import time

    cores = sorted(os.sched_getaffinity(0))
    pending = list(commands)
    running: list[tuple[str, int | None, subprocess.Popen[bytes]]] = []
    failed: list[str] = []
    while pending or running:
        while pending and len(running) < jobs:
            busy = {c for _, c, _ in running}
            core = next((c for c in cores if c not in busy), None) if jobs > 1 else None
            label = pending.pop(0)
            pin = functools.partial(os.sched_setaffinity, 0, {core}) if core is not None else None
            proc = subprocess.Popen(
                list(commands[label]), env=None if env is None else dict(env), cwd=cwd, preexec_fn=pin
            )
            running.append((label, core, proc))
            log(f"started {label}" + (f" on core {core}" if core is not None else ""))
        time.sleep(1)
        for item in list(running):
            if item[2].poll() is not None:
                running.remove(item)
                log(f"{item[0]} finished (rc {item[2].returncode})")
                if item[2].returncode:
                    failed.append(item[0])
    return failed


def run_or_reuse(
    config: Any,
    out_dir: str | Path | None = None,
    *,
    on_mismatch: OnMismatch = "retrain",
    resume: bool = True,
    quiet: bool = True,
    log: Callable[[str], None] = print,
    keep_checkpoints: bool = False,
) -> RunRecord:
    """:func:`bertdistill.training.runs.run_or_reuse` (train ``config`` into ``out_dir`` unless a finished run
    of the same full config is there; resume an unfinished one), read back as a :class:`RunRecord`.

    A finished run's ``checkpoints/`` (weights with optimizer state, there to resume a killed run) is removed
    unless ``keep_checkpoints``: a benchmark table keeps dozens of finished runs, and their checkpoints filled
    this machine's disk once. The model, ``best/``, ``stages/``, the config and the logs stay, and a finished run
    is reused without them."""
    from bertdistill.training import runs

    done = runs.run_or_reuse(config, out_dir, on_mismatch=on_mismatch, resume=resume, quiet=quiet, log=log)
    if not keep_checkpoints:  # run_or_reuse returns a finished run (or raises)
        shutil.rmtree(done.dir / "checkpoints", ignore_errors=True)
    rec = read_run(done.dir, done.config, reused=done.reused)
    rec.train_seconds = done.seconds
    return rec


def run_rows(
    rows: Sequence[Row],
    seeds: Sequence[int],
    work: str | Path,
    common: Sequence[str] = (),
    *,
    only: Iterable[str] | None = None,
    on_mismatch: OnMismatch = "retrain",
    link_from: Sequence[str | Path] = (),
    quiet: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, list[RunRecord]]:
    """The seed loop: every row at every seed (seed-major, so a partial sweep covers every row), each run in
    ``work/<row>-seed<seed>`` through :func:`run_or_reuse`. ``link_from`` dirs are searched first for a
    finished run of the same config under the same name (e.g. another benchmark's). Returns row name → its
    records in seed order."""
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"row names must be unique: {names}")
    wanted = set(only) if only is not None else None
    unknown = sorted((wanted or set()) - set(names))
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; rows: {names}")
    out: dict[str, list[RunRecord]] = {r.name: [] for r in rows if wanted is None or r.name in wanted}
    from bertdistill import load_config

    for seed in seeds:
        for row in rows:
            if (wanted is not None and row.name not in wanted) or (row.seeds and seed not in row.seeds):
                continue
            target = Path(work) / f"{row.name}-seed{seed}"
            cfg = row.config(seed, common, target)
            rec = None
            for other in link_from:
                cand = Path(other).expanduser() / target.name
                if is_finished(cand):
                    if not config_diff(load_config(cand / CONFIG_FILE), cfg) + inputs_diff(cand, cfg):
                        log(f"reusing {cand} (linked, same config)")
                        rec = read_run(cand, cfg, reused=True)
                        break
                    log(f"not linking {cand}: another config")
            if rec is None:
                rec = run_or_reuse(cfg, target, on_mismatch=on_mismatch, quiet=quiet, log=log)
            out[row.name].append(rec)
            log(f"{row.name} seed {seed}: {rec.metrics}")
    return out


# ----------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stats:
    mean: float
    std: float | None
    """Sample standard deviation (n − 1); ``None`` with one value."""
    values: list[float]


def stats(values: Sequence[float]) -> Stats:
    if not values:
        raise ValueError("no values to average")
    vals = [float(v) for v in values]
    return Stats(statistics.fmean(vals), sample_std(vals), vals)


def score_fields(key: str, values: Sequence[float] | None) -> dict[str, Any]:
    """``{key: mean, key_std: sample std, keys: per-seed values}``; all ``None`` when ``values`` is None/empty."""
    if not values:
        return {key: None, f"{key}_std": None, f"{key}s": None}
    s = stats(values)
    return {key: s.mean, f"{key}_std": s.std, f"{key}s": s.values}


# ----------------------------------------------------------------------------------------------- describing runs


def precision_of(config: Any) -> str:
    mp = config.train.mixed_precision
    return "fp32" if mp in (None, "no") else str(mp)


_OPTIMIZERS = {"adamw": "AdamW", "adadelta": "Adadelta", "sgd": "SGD"}


def optimizer_of(config: Any) -> str:
    """The optimizer(s) of a run's stages, e.g. ``AdamW fused`` (a stage may choose its own)."""
    names = [config.train.optimizer]
    try:
        from bertdistill.data.loading import resolve_task
        from bertdistill.registry import get_method

        method = get_method(config.method.name)(config, resolve_task(config.data))
        names = [s.optimizer or config.train.optimizer for s in method.stages()]
    except Exception:  # a method whose stages need more than the config: report the run's default
        pass
    shown = []
    for n in dict.fromkeys(names):
        label = _OPTIMIZERS.get(n, n)
        if n == "adamw":
            label += " fused" if config.train.fused_adam else " (per-tensor loop)"
        shown.append(label)
    return " + ".join(shown)


def train_examples(config: Any) -> int | None:
    """Training examples of a run's task data after its seeded subsampling (the method's ``train_data`` file
    when it has one, e.g. TinyBERT's augmented set); ``None`` when the run trains on a raw-text corpus."""
    from bertdistill.data.loading import load_examples, resolve_task, subsample

    data = config.data
    train_data = getattr(config.method, "train_data", None)
    if train_data:
        data = dataclasses.replace(data, path=train_data, format="auto")
    try:
        spec = resolve_task(config.data)
        ex = load_examples(data, spec, config.data.train_split)
    except Exception:
        return None
    return len(subsample(ex, config.data.max_train_examples, config.train.seed))


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__}; {platform.system()}"


def command(argv: Sequence[str] | None = None) -> str:
    """The command line that is running, as ``python -m benchmarks.<script> ...``."""
    argv = list(sys.argv if argv is None else argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = f"-m {spec.name}" if spec is not None and spec.name else os.path.relpath(argv[0], ROOT)
    return "python " + " ".join([head, *(shlex.quote(a) for a in argv[1:])])


def today() -> str:
    return _dt.date.today().isoformat()


def git_commit() -> str | None:
    """The commit of the checkout that measures, with ``+dirty`` when tracked code differs from it (so a figure
    from uncommitted code says so; the package, the benchmarks and the recipes count, result files and docs do
    not); ``None`` outside a git checkout."""
    head = (git("rev-parse", "HEAD") or "").strip()
    if not head:
        return None
    code = ["src", "benchmarks", ":(exclude)benchmarks/results", ":(exclude)benchmarks/RESULTS.md"]
    status = git("status", "--porcelain", "--untracked-files=no", "--", *code)
    return head + ("+dirty" if status and status.strip() else "")


@functools.cache
def commit_at_start() -> str | None:
    """:func:`git_commit` as it was when this benchmark started, which is what a result records.

    Read once, when the harness is imported (every benchmark imports it at its start): the code a run loads
    then is the code that measures it. A commit or an edit made while it trains (results committed beside a running
    sweep, a doc fixed) is not its code and does not change what it records.
    """
    return git_commit()


commit_at_start()


def provenance(
    kind: str,
    *,
    seeds: Sequence[int],
    steps: int | None,
    train_examples: int | None,
    precision: str,
    optimizer: str,
    train_threads: int | None,
    timing_threads: int | None,
) -> dict[str, Any]:
    """The fields every result file starts with (:class:`benchmarks.schema.Provenance`), and the code that
    measured: bertdistill's ``version`` and the checkout's ``commit`` when the run started
    (:func:`commit_at_start`)."""
    from bertdistill import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "command": command(),
        "date": today(),
        "machine": machine(),
        "version": __version__,
        "commit": commit_at_start(),
        "threads": {"train": train_threads, "timing": timing_threads},
        "precision": precision,
        "optimizer": optimizer,
        "seeds": list(seeds),
        "steps": steps,
        "train_examples": train_examples,
    }


def scratch_dir(prefix: str) -> Path:
    """A temporary work dir for runs that are only timed, removed when the process exits.

    The timing benchmarks write teacher caches and checkpoints (several GB a run); left behind they fill
    the disk. Removal runs at a normal exit, on an exception and on SIGTERM (turned into ``SystemExit``
    here); only a SIGKILL leaves the dir behind.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    return path


def write_result(name: str, result: Mapping[str, Any], results_dir: str | Path | None = None) -> Path:
    """Validate ``result`` against :mod:`benchmarks.schema` and write ``<results_dir>/<name>.json``."""
    check(result, name)
    out = Path(results_dir) if results_dir is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- timing


def time_models(
    teacher: str | Path,
    students: Mapping[str, str | Path],
    *,
    threads: int | None = None,
    n_latency: int = 200,
    timing: bool = True,
    **compare_kwargs: Any,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Score the teacher and each student on dev and time them interleaved in one run (batch-1 latency and
    batch-32 throughput, medians): ``(teacher row, {label: student row})`` of
    :func:`bertdistill.evaluation.compare`, whose students carry ``latency_speedup`` / ``throughput_speedup``."""
    from bertdistill.evaluation import compare

    labels = list(students)
    rows = compare(
        teacher,
        [students[k] for k in labels],
        labels=["teacher", *labels],
        threads=threads,
        n_latency=n_latency,
        timing=timing,
        **compare_kwargs,
    )
    return rows[0], dict(zip(labels, rows[1:], strict=True))


def speed_fields(t: Mapping[str, Any], s: Mapping[str, Any]) -> dict[str, Any]:
    """The size and speed fields of a result from the :func:`time_models` rows of a teacher and a student."""
    timed = "latency_ms_median" in s
    return {
        "teacher_params": t["params"],
        "student_params": s["params"],
        "latency_speedup": s.get("latency_speedup"),
        "throughput_speedup": s.get("throughput_speedup"),
        "teacher_latency_ms": t.get("latency_ms_median"),
        "student_latency_ms": s.get("latency_ms_median"),
        "teacher_throughput": t.get("throughput_per_s"),
        "student_throughput": s.get("throughput_per_s"),
        "latency_sentences": s.get("latency_sentences") if timed else None,
        "timing_threads": s.get("threads") if timed else None,
    }


# ----------------------------------------------------------------------------------------------- tables


@dataclass
class Table:
    """A distillation benchmark: rows trained over the same seeds, scored and timed against one teacher."""

    name: str
    teacher: str | Path
    """The teacher dir scored and timed against the students (rows get ``teacher.path`` from ``common`` or
    their recipe)."""
    rows: list[Row]
    seeds: list[int]
    common: list[str] = field(default_factory=list)
    """Overrides applied to every row (before the row's own)."""
    primary: str | None = None
    """The headline row (top-level ``student_score``); default: the first."""
    baseline: str | None = None
    """The no-KD row of rows that name none; ``None`` = no baseline."""
    method: str | None = None
    """The result's ``method`` (default: the primary row's method)."""
    student: str | None = None
    """The result's ``student`` description (default: from the primary row's config)."""

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def primary_name(self) -> str:
        return self.primary or self.rows[0].name

    def baseline_of(self, row: Row) -> str | None:
        return row.baseline or self.baseline


@dataclass
class TimingOptions:
    threads: int | None = None
    n_latency: int = 200
    max_examples: int | None = None
    max_length: int = 128
    timing: bool = True


def _student_description(rec: RunRecord, shape: Mapping[str, Any], row: str) -> str:
    cfg = rec.config
    init = cfg.student.init
    detail = ""
    cj = rec.dir / "config.json"
    if cj.is_file():
        copied = json.loads(cj.read_text()).get("bertdistill_copied_layers")
        if copied is not None:
            detail = f", teacher layers {copied}"
    where = f" from {cfg.student.path}" if init == "pretrained" and cfg.student.path else ""
    size = f"{shape.get('layers')} layers × {shape.get('hidden')}" if shape.get("layers") else "student"
    return f"{size} ({row}: init {init}{where}{detail})"


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def table_rows(
    table: Table,
    runs: Mapping[str, list[RunRecord]],
    metric: str,
    teacher_score: float,
    students: Mapping[str, Mapping[str, Any]],
    scores: Mapping[str, Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """The ``rows`` of a distillation result (:class:`benchmarks.schema.DistillRow`), one per row that ran.
    Each run's score is its ``metrics.json`` value of ``metric`` unless ``scores`` gives a row's per-seed
    scores (e.g. re-evaluated with an inference option)."""

    def scores_of(name: str) -> list[float]:
        if scores is not None and name in scores:
            return [float(x) for x in scores[name]]
        return [r.score(metric) for r in runs.get(name, [])]

    out = []
    for row in table.rows:
        recs = runs.get(row.name)
        if not recs:
            continue
        first, s = recs[0], students.get(row.name, {})
        row_scores = scores_of(row.name)
        base = table.baseline_of(row)
        base_scores = scores_of(base) if base else []
        mean = statistics.fmean(row_scores)
        out.append(
            {
                "row": row.name,
                "method": first.config.method.name,
                "recipe": row.recipe_label(),
                "overrides": list(row.overrides),
                "seeds": [r.seed for r in recs],
                **score_fields("student_score", row_scores),
                "no_kd_row": base if base_scores else None,
                **score_fields("no_kd_score", base_scores),
                "retention": mean / teacher_score if teacher_score else None,
                # the last model of each run (student_score: the loop's selected one)
                **score_fields(
                    "final_score", [r.final_metrics[metric] for r in recs if metric in r.final_metrics]
                ),
                "evaluations": [r.evaluations for r in recs],
                "steps": first.steps,
                "stage_steps": first.stage_steps,
                "steps_per_seed": [r.steps for r in recs],
                "train_examples": train_examples(first.config),
                "precision": precision_of(first.config),
                "optimizer": optimizer_of(first.config),
                "train_threads": first.config.train.cpu_threads,
                "student_params": s.get("params", 0),
                "student_layers": s.get("layers"),
                "student_hidden": s.get("hidden"),
                "latency_speedup": s.get("latency_speedup"),
                "throughput_speedup": s.get("throughput_speedup"),
                "student_latency_ms": s.get("latency_ms_median"),
                "student_throughput": s.get("throughput_per_s"),
                "train_sec_per_step_median": _median([r.sec_per_step for r in recs]),
                "train_seconds": [r.train_seconds for r in recs],
                "runs": [str(r.dir) for r in recs],
                "all_metrics": [r.metrics for r in recs],
            }
        )
    return out


def table_result(
    table: Table,
    runs: Mapping[str, list[RunRecord]],
    teacher_row: Mapping[str, Any],
    students: Mapping[str, Mapping[str, Any]],
    scores: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """A :class:`benchmarks.schema.DistillResult` from the runs and the :func:`time_models` rows (``scores``:
    see :func:`table_rows`)."""
    metric = teacher_row["metric"]
    rows = table_rows(table, runs, metric, teacher_row["score"], students, scores)
    prim_name = table.primary_name()
    prim = next(r for r in rows if r["row"] == prim_name)
    first = runs[prim_name][0]
    s = students[prim_name]
    timed = "latency_ms_median" in s
    return {
        **provenance(
            "distill",
            seeds=sorted({seed for r in rows for seed in r["seeds"]}),
            steps=prim["steps"],
            train_examples=prim["train_examples"],
            precision=prim["precision"],
            optimizer=prim["optimizer"],
            train_threads=prim["train_threads"],
            timing_threads=s.get("threads") if timed else None,
        ),
        "method": table.method or prim["method"],
        "task": teacher_row["task"],
        "teacher": str(table.teacher),
        "student": table.student or _student_description(first, s, prim_name),
        "metric": metric,
        "teacher_score": teacher_row["score"],
        "primary_row": prim_name,
        **{k: prim[k] for k in ("student_score", "student_score_std", "student_scores")},
        "baseline_row": prim["no_kd_row"],
        **{k: prim[k] for k in ("no_kd_score", "no_kd_score_std", "no_kd_scores")},
        "retention": prim["retention"],
        "best_row": max(rows, key=lambda r: r["student_score"])["row"],
        **speed_fields(teacher_row, s),
        "student_layers": s.get("layers"),
        "student_hidden": s.get("hidden"),
        "eval_examples": teacher_row["examples"],
        "overrides": list(table.common),
        "model_selection": (
            "student_score(s): the loop's selected model of each run — the final one when it evaluates once, the "
            "best on dev when it evaluates more than once; rows[].final_score(s): the last model, as the loop's own "
            "evaluation scored it"
        ),
        "teacher_metrics": teacher_row["metrics"],
        "rows": rows,
    }


def run_table(
    table: Table,
    *,
    work: str | Path | None = None,
    timing: TimingOptions | None = None,
    only: Iterable[str] | None = None,
    train_only: bool = False,
    on_mismatch: OnMismatch = "retrain",
    link_from: Sequence[str | Path] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Train (or reuse) every row at every seed, score and time the teacher against each row's first-seed
    student in one run, and return the result (``None`` with ``train_only``)."""
    runs = run_rows(
        table.rows,
        table.seeds,
        Path(work) if work is not None else WORK / table.name,
        table.common,
        only=only,
        on_mismatch=on_mismatch,
        link_from=link_from,
        log=log,
    )
    if train_only:
        return None
    missing = [n for n in (table.primary_name(), table.baseline) if n and n not in runs]
    if missing:
        raise SystemExit(f"rows {missing} did not run (see --only)")
    t = timing or TimingOptions()
    data = runs[table.primary_name()][0].config.data  # every model is scored on the primary row's dev set
    teacher_row, students = time_models(
        table.teacher,
        {name: recs[0].dir for name, recs in runs.items()},
        threads=t.threads,
        n_latency=t.n_latency,
        timing=t.timing,
        max_examples=t.max_examples,
        max_length=t.max_length,
        task=data.task,
        data_path=data.path,
    )
    scores = None
    if t.max_examples is not None or any(r.config.data.max_eval_examples for rs in runs.values() for r in rs):
        scores = rescore(runs, students, task=data.task, data_path=data.path, options=t)
    result = table_result(table, runs, teacher_row, students, scores)
    result["score_source"] = (
        "each run re-scored on the teacher's dev examples (the dev set is subsampled)"
        if scores is not None
        else "each run's metrics.json (the loop's evaluation on the full dev set, the teacher's too)"
    )
    return result


def rescore(
    runs: Mapping[str, list[RunRecord]],
    students: Mapping[str, Mapping[str, Any]],
    *,
    task: str,
    data_path: str | None,
    options: TimingOptions,
) -> dict[str, list[float]]:
    """Every run's score on exactly the dev examples the teacher was scored on. Needed when the dev set is
    subsampled: the loop draws its eval subsample with each run's seed, ``compare`` with seed 0. The first
    seed's score comes from the :func:`time_models` row, the others from ``evaluate``."""
    from bertdistill.evaluation import evaluate

    out: dict[str, list[float]] = {}
    for name, recs in runs.items():
        out[name] = [
            students[name]["score"]
            if i == 0
            else evaluate(
                rec.dir,
                task=task,
                data_path=data_path,
                max_examples=options.max_examples,
                max_length=options.max_length,
            )["score"]
            for i, rec in enumerate(recs)
        ]
    return out


def summary(result: Mapping[str, Any]) -> str:
    """A few lines for the console: the teacher, each row's mean ± std and speed-ups."""

    def pm(m: float | None, s: float | None) -> str:
        if m is None:
            return "-"
        return f"{m:.4f}" + (f" ± {s:.4f}" if s is not None else "")

    lines = [f"teacher {result['metric']} {result['teacher_score']:.4f}"]
    for r in result["rows"]:
        speed = (
            f"  latency ×{r['latency_speedup']:.2f}  throughput ×{r['throughput_speedup']:.2f}"
            if r.get("latency_speedup") is not None
            else ""
        )
        lines.append(
            f"{r['row']:<24} {pm(r['student_score'], r['student_score_std'])}  "
            f"no-KD {pm(r['no_kd_score'], r['no_kd_score_std'])}{speed}  steps {r['stage_steps']}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI pieces


def add_run_flags(p: Any) -> None:
    """Flags every training benchmark shares."""
    p.add_argument(
        "--on-mismatch",
        choices=["retrain", "error"],
        default="retrain",
        help="a finished run of ANOTHER config in a row's dir: retrain it (default) or stop with the diff; "
        "a finished run of the same full config is always reused",
    )
    p.add_argument(
        "--results-dir", default=str(RESULTS), help="where the result JSON goes (smoke runs: elsewhere)"
    )
    p.add_argument(
        "--link-from",
        action="append",
        default=[],
        help="another bench dir holding finished runs of this table (repeatable): a run there of the same full "
        "config is used in place, not retrained (e.g. rows trained in parallel under other --name)",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="accepted for old commands: finished runs of the same config are always reused now",
    )


def speed_flags(p: Any, *, name: str, seed: int, threads: int) -> None:
    """Flags of the speed benchmarks (throughput, end to end, step profile): teacher, data, seed, threads and
    where the result goes."""
    p.add_argument("--teacher", default="minilm-l6", help="a fine-tuned SST-2 teacher dir (or a model alias)")
    p.add_argument("--data", default=str(SHARED / "SST-2"))
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--name", default=name)
    p.add_argument("--results-dir", default=str(RESULTS))


def samples_per_s(history: Sequence[Mapping[str, Any]], batch: int, warmup: int) -> float:
    """Training samples/s of a run from the loop's per-step wall times, after ``warmup`` steps."""
    per_step = [r["sec_per_step"] for r in history if "loss" in r][warmup:]
    if not per_step:
        raise ValueError(f"no timed steps after {warmup} warm-up steps (log_every must be 1)")
    return batch * len(per_step) / sum(per_step)


def quiet() -> None:
    from bertdistill.logs import quiet_hf

    quiet_hf()


__all__ = [
    "INPUTS_FILE",
    "LOG_FILE",
    "RESULTS",
    "ROOT",
    "SHARED",
    "WORK",
    "ConfigMismatchError",
    "Row",
    "RunRecord",
    "Stats",
    "Table",
    "TimingOptions",
    "add_run_flags",
    "command",
    "comparable",
    "config_diff",
    "fingerprint",
    "input_fingerprints",
    "inputs_diff",
    "is_finished",
    "machine",
    "optimizer_of",
    "parse_row",
    "precision_of",
    "provenance",
    "quiet",
    "read_run",
    "rescore",
    "run_or_reuse",
    "run_rows",
    "run_table",
    "samples_per_s",
    "score_fields",
    "speed_fields",
    "speed_flags",
    "stage_steps",
    "stats",
    "summary",
    "table_result",
    "table_rows",
    "time_models",
    "today",
    "train_examples",
    "with_shared_data",
    "write_result",
]
