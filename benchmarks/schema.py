"""The one schema of ``benchmarks/results/*.json``: the fields every result file must have, checked by every
writer (:func:`benchmarks.harness.write_result`) and by ``make bench`` (:mod:`benchmarks.report`).

Six kinds of result, one provenance block:

* :class:`DistillResult` (``kind: "distill"``): a teacher, a table of student ``rows`` (each trained over the
  same seeds), the headline (``primary``) row's scores at the top level;
* :class:`ThroughputResult` (``kind: "throughput"``): training samples/s of several ``rows`` timed in one run;
* :class:`GenerationResult` (``kind: "generation"``): seq2seq students scored by decoding (BLEU), with and
  without the KD term, against a teacher measured by its own metric (no retention, no timing);
* :class:`EndToEndResult` (``kind: "end_to_end"``): wall time from start to a saved student (cache build included)
  of the same distillation in several tools / settings, with the dev score of each saved student;
* :class:`ReplayResult` (``kind: "replay"``): each headline file's recipe trained for a few steps by the code
  that measured the file and by a later commit, the saved weights compared exactly (:mod:`benchmarks.replay`);
* :class:`DeployResult` (``kind: "deploy"``): trained students measured in their deployed forms (fp32 / bf16 /
  int8 eager, ONNX fp32 / int8), each form's score change and speed-ups, one ``best`` form per student. Nothing is
  trained there, so it has its own provenance block (:class:`DeployProvenance`: no seeds, steps or optimizer).

Every score with per-seed values is written three ways: ``K`` (the mean), ``K_std`` (the *sample* standard
deviation, n − 1; ``None`` with fewer than two seeds) and ``Ks`` (the per-seed list, in seed order);
:func:`validate` checks that the mean and the std agree with the list.

Files written before this schema (no ``schema_version``) are validated against the fields required then
(:class:`LegacyDistillResult`, :class:`LegacyOtherResult`); they do not record threads, precision or optimizer,
and ``K_std`` is required there only where the file holds two or more per-seed values of ``K`` (it can then be
computed from the file; single-seed legacy files have no std to give).
"""

from __future__ import annotations

import math
import statistics
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, Union

SCHEMA_VERSION = 2

KINDS = ("distill", "throughput", "generation", "deploy", "end_to_end", "replay")

DEPLOY_PRECISIONS = ("fp32", "bf16", "int8", "onnx-fp32", "onnx-int8")
"""The deployed forms of a student: eager torch in fp32 / bf16 / dynamic int8, ONNX Runtime fp32 / int8."""

BEST_MAX_SCORE_DROP = 0.005
"""A deployed form may be a student's ``best`` only if it loses at most this much score against fp32 eager
(0.5 point of a metric written as a fraction; :func:`max_score_drop` gives it on any metric's scale)."""

POINT_METRICS = ("bleu", "chrf")
"""Metrics written in points (0–100, as sacreBLEU gives them) rather than as a fraction of 1."""


def points_scale(metric: str) -> float:
    """The factor that turns a score of ``metric`` into points: 1 for one already in points (BLEU, chrF:
    :data:`POINT_METRICS`), 100 for a fraction of 1."""
    return 1.0 if metric.lower().startswith(POINT_METRICS) else 100.0


def max_score_drop(metric: str) -> float:
    """:data:`BEST_MAX_SCORE_DROP` on ``metric``'s own scale: 0.005 for a fraction (accuracy, F1, a
    correlation), 0.5 for a metric in points (BLEU, chrF). Both are half a point."""
    return BEST_MAX_SCORE_DROP * 100 / points_scale(metric)


class Threads(TypedDict):
    train: int | None
    """``train.cpu_threads`` of the runs (``None``: torch's default, all physical cores)."""
    timing: int | None
    """Threads of the inference timing (``None``: nothing was timed)."""


class Provenance(TypedDict):
    """What made the file: recorded by every writer (:func:`benchmarks.harness.provenance`). Files written since
    2026-12-05 also name the code that measured: ``version`` (bertdistill's) and ``commit`` (the checkout's, with
    ``+dirty`` when tracked code differed from it; ``None`` outside a checkout) — checked where present (older
    files lack them), see :data:`CODE_FIELDS`."""

    schema_version: int
    kind: str
    command: str
    """The command line that wrote the file (``python -m benchmarks.<script> ...``)."""
    date: str
    machine: str
    threads: Threads
    precision: str
    """Training precision of the headline row: ``fp32`` | ``bf16`` | ``fp16`` (rows record their own)."""
    optimizer: str
    """Optimizer of the headline row, e.g. ``AdamW fused`` (rows record their own)."""
    seeds: list[int]
    steps: int | None
    """Optimizer steps of the headline row (all stages; ``None`` when nothing was trained here)."""
    train_examples: int | None
    """Training examples the headline row saw (after subsampling; ``None`` for raw-text corpora)."""


class TrainedRow(TypedDict):
    """What every table row records: a recipe (+ overrides) trained over the seeds, and its score."""

    row: str
    method: str
    recipe: str
    overrides: list[str]
    seeds: list[int]
    student_score: float
    student_score_std: float | None
    student_scores: list[float]
    steps: int
    stage_steps: dict[str, int]
    train_examples: int | None
    precision: str
    optimizer: str
    train_threads: int | None
    student_params: int
    runs: list[str]


class DistillRow(TrainedRow):
    """One row of a distillation table."""

    no_kd_score: float | None
    no_kd_score_std: float | None
    no_kd_scores: list[float] | None
    retention: float | None
    student_layers: int | None
    student_hidden: int | None
    latency_speedup: float | None
    throughput_speedup: float | None


class ScoredResult(Provenance):
    """The fields of every result that scores students against a teacher, headline (``primary_row``) first."""

    method: str
    task: str
    teacher: str
    student: str
    metric: str
    teacher_score: float
    student_score: float
    student_score_std: float | None
    student_scores: list[float]
    no_kd_score: float | None
    no_kd_score_std: float | None
    no_kd_scores: list[float] | None
    teacher_params: int
    student_params: int
    primary_row: str


class DistillResult(ScoredResult):
    retention: float
    latency_speedup: float | None
    throughput_speedup: float | None
    student_layers: int | None
    student_hidden: int | None
    rows: list[DistillRow]


class ThroughputRow(TypedDict):
    row: str
    samples_per_s: float
    """Median over the rounds."""
    samples_per_s_rounds: list[float]
    precision: str
    optimizer: str
    threads: int


class ThroughputResult(Provenance):
    what: str
    rows: list[ThroughputRow]
    reference: str
    ratio_vs_reference: dict[str, float]


class EndToEndRow(TypedDict):
    row: str
    tool: str
    precision: str
    optimizer: str
    threads: int
    teacher_cache: bool
    wall_s: float
    """Start (teacher loading, tokenisation) to a saved student, the teacher cache build included."""
    cache_build_s: float | None
    """Teacher compute time of the cache build inside ``wall_s`` (``None``: no cache)."""
    dev_accuracy: float


class EndToEndResult(Provenance):
    what: str
    rows: list[EndToEndRow]
    epochs: int
    concurrency: str
    textbrewer_optimizer: str
    bertdistill_optimizer: str
    end_to_end_speedup: float
    """TextBrewer's wall time / bertdistill's (same optimizer, fp32, cache build included)."""
    textbrewer_wall_s: float
    bertdistill_wall_s: float
    cache_build_s: float | None
    textbrewer_dev_accuracy: float
    bertdistill_dev_accuracy: float


class ReplayRow(TypedDict):
    """One headline file: whether its commit and ``against`` train the same weights."""

    file: str
    """The headline result's name (``benchmarks/results/<file>.json``)."""
    method: str | None
    task: str | None
    commit: str
    """The commit the file records (full), ``""`` when it records none."""
    outcome: str
    """``bit-identical`` | ``different`` | ``same library code`` (``src/`` equal: nothing to run) |
    ``not replayed: <why>`` | ``failed: <why>``. Replayed rows also give ``models``, ``tensors`` and the
    ``differing`` tensors."""


class ReplayResult(Provenance):
    what: str
    against: str
    """The reference commit (full)."""
    steps_per_stage: int
    rows: list[ReplayRow]
    sanity: dict[str, Any]
    """The same comparison between two runs of the reference code that differ on purpose (another seed): it
    must find them ``different``, or an ``identical`` above would mean nothing."""


class GenerationResult(ScoredResult):
    """Students that generate text (C-MLM): ``metric`` is theirs (BLEU, 0–100); the teacher is not a generator,
    so ``teacher_score`` is in its own ``teacher_metric`` and there is no retention (and no timing)."""

    teacher_metric: str
    decoding: dict[str, Any]
    rows: list[TrainedRow]


class DeployRow(TypedDict):
    """One deployed form of one student, timed in the same run as the teacher and the student's fp32 form."""

    method: str
    student: str
    """The student's run dir (path) or name; the report matches it to a distillation row through the row's
    ``runs`` (a path), ``<result file>:<row>``, or the row's name."""
    precision: str
    """One of :data:`DEPLOY_PRECISIONS`."""
    metric: str
    score: float
    score_change: float
    """``score`` − the same student's ``fp32`` score (so 0 on its fp32 row)."""
    latency_ms: float
    """Batch 1, median."""
    speedup_vs_fp32: float
    """The student's fp32 ``latency_ms`` / this ``latency_ms``."""
    speedup_vs_teacher: float | None
    """The teacher's batch-1 latency / this ``latency_ms``: the row's own ``teacher_latency_ms`` when it has one
    (the teacher timed in the same run as this student), else the file's. ``None`` in a file without a teacher."""
    throughput: float
    """Samples/s at batch 32."""
    best: bool
    """The student's best deployed form: the fastest (lowest ``latency_ms``) with ``score_change`` ≥
    −:func:`max_score_drop` of the file's metric. Exactly one per student."""


class DeployProvenance(TypedDict):
    schema_version: int
    kind: str
    command: str
    date: str
    machine: str
    version: str
    """bertdistill's version."""
    commit: str | None
    """The git commit of the checkout that measured (``None`` outside a checkout)."""
    threads: Threads


class DeployResult(DeployProvenance):
    task: str
    metric: str
    teacher: str | None
    """The teacher the students are timed against; ``None`` when they have none that does their task (a
    seq2seq student: its C-MLM teacher is a masked LM, not a translator). Then ``teacher_score``,
    ``teacher_latency_ms`` and every row's ``speedup_vs_teacher`` are ``None`` too, and the speed-ups are the
    rows' ``speedup_vs_fp32``: against the same student in fp32 eager."""
    teacher_score: float | None
    teacher_latency_ms: float | None
    """The teacher's batch-1 median latency in the same run (fp32 eager)."""
    rows: list[DeployRow]
    """Optional (``--teacher-forms``): ``teacher_forms``, the teacher's own forms as rows of this shape, and on
    every row ``speedup_vs_teacher_same_form`` / ``speedup_vs_teacher_best_form``, its ``speedup_vs_teacher``
    over the teacher form's in the same precision / the teacher's best form (checked by ``_check_deploy``)."""


class LegacyDistillResult(TypedDict):
    """The distillation fields required before ``schema_version`` 2."""

    method: str
    task: str
    teacher: str
    student: str
    metric: str
    teacher_score: float
    student_score: float
    no_kd_score: float | None
    retention: float
    teacher_params: int
    student_params: int
    latency_speedup: float
    throughput_speedup: float
    train_examples: int | None
    steps: int | None
    seeds: list[int]
    command: str
    date: str
    machine: str
    student_layers: int
    student_hidden: int


class LegacyOtherResult(TypedDict):
    """Any other result file written before ``schema_version`` 2 (throughput measurements)."""

    command: str
    date: str
    machine: str


SCHEMAS: dict[str, type] = {
    "distill": DistillResult,
    "throughput": ThroughputResult,
    "generation": GenerationResult,
    "deploy": DeployResult,
    "end_to_end": EndToEndResult,
    "replay": ReplayResult,
}


def schema_of(result: Mapping[str, Any]) -> type:
    """The TypedDict a result file is checked against."""
    if "schema_version" not in result:
        return LegacyDistillResult if "teacher_score" in result else LegacyOtherResult
    return SCHEMAS.get(str(result.get("kind")), DistillResult)


def is_legacy(result: Mapping[str, Any]) -> bool:
    return "schema_version" not in result


# ----------------------------------------------------------------------------------------------- checking


def _type_ok(value: Any, tp: Any, where: str, problems: list[str]) -> bool:
    """Whether ``value`` has the runtime shape of the annotation ``tp`` (nested TypedDicts are checked field
    by field, their problems appended)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            return type(None) in args
        return any(_type_ok(value, a, where, problems) for a in args if a is not type(None))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (str, bool):
        return isinstance(value, tp)
    if origin is list:
        if not isinstance(value, list):
            return False
        (item,) = typing.get_args(tp) or (Any,)
        return all(_type_ok(v, item, f"{where}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            return False
        _, item = typing.get_args(tp) or (Any, Any)
        return all(_type_ok(v, item, f"{where}.{k}", problems) for k, v in value.items())
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            return False
        problems += _check_fields(value, tp, where)
        return True
    return isinstance(value, tp)


def _check_fields(result: Mapping[str, Any], schema: type, where: str = "") -> list[str]:
    problems: list[str] = []
    hints = typing.get_type_hints(schema)
    missing = [k for k in hints if k not in result]
    if missing:
        problems.append(f"{where or 'result'}: missing {missing}")
    for k, tp in hints.items():
        if k in result and not _type_ok(result[k], tp, f"{where}{'.' if where else ''}{k}", problems):
            problems.append(f"{where}{'.' if where else ''}{k}: {result[k]!r} is not {_name(tp)}")
    return problems


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def sample_std(values: Sequence[float]) -> float | None:
    """The sample standard deviation (n − 1) of per-seed values; ``None`` with fewer than two."""
    return statistics.stdev(values) if len(values) > 1 else None


def _check_stats(obj: Mapping[str, Any], where: str, legacy: bool) -> list[str]:
    """For every per-seed list ``Ks`` next to a mean ``K``: the mean matches, and ``K_std`` is present and
    matches the sample std (legacy files: only where two or more values make it computable)."""
    problems = []
    pairs = [(k[:-1], k) for k in obj if k.endswith("_scores") and k[:-1] in obj]
    if "scores" in obj and "mean" in obj:  # legacy ``variants`` entries
        pairs.append(("mean", "scores"))
    for key, many in pairs:
        values, mean = obj[many], obj[key]
        if values is None or mean is None:
            continue
        if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) for v in values):
            problems.append(f"{where}{many}: expected a non-empty list of numbers, got {values!r}")
            continue
        if not isinstance(mean, (int, float)):
            continue  # the type check reports it
        if not _close(mean, statistics.fmean(values)):
            problems.append(f"{where}{key} = {mean} is not the mean of {many} {values}")
        std_key = "std" if key == "mean" else f"{key}_std"
        if std_key not in obj:
            if not legacy or len(values) > 1:
                problems.append(f"{where}{std_key}: missing (the std of {many})")
            continue
        std, want = obj[std_key], sample_std(values)
        if want is None:
            if std is not None and not (legacy and std == 0):
                problems.append(f"{where}{std_key} = {std}: one seed has no std (write null)")
        elif not isinstance(std, (int, float)) or not _close(std, want):
            problems.append(f"{where}{std_key} = {std} is not the sample std of {many} ({want})")
    return problems


CODE_FIELDS: dict[str, Any] = {"version": str, "commit": str | None}
"""Provenance fields optional for older files: type-checked where present."""


def validate(result: Mapping[str, Any]) -> list[str]:
    """Everything wrong with a result: missing fields, wrong types, means / stds that disagree with the
    per-seed lists. An empty list = valid."""
    legacy = is_legacy(result)
    if not legacy:
        if result.get("schema_version") != SCHEMA_VERSION:
            return [f"schema_version {result.get('schema_version')!r}: this code reads {SCHEMA_VERSION}"]
        if result.get("kind") not in KINDS:
            return [f"kind {result.get('kind')!r}: expected one of {list(KINDS)}"]
    schema = schema_of(result)
    problems = _check_fields(result, schema)
    required = typing.get_type_hints(schema)  # deploy files require them: checked there already
    for k, tp in CODE_FIELDS.items():
        if k in result and k not in required and not _type_ok(result[k], tp, k, problems):
            problems.append(f"{k}: {result[k]!r} is not {_name(tp)}")
    problems += _check_stats(result, "", legacy)
    for table in ("rows", "variants"):
        entries = result.get(table)
        items = entries.items() if isinstance(entries, dict) else enumerate(entries or [])
        for i, entry in items:
            if isinstance(entry, dict):
                problems += _check_stats(entry, f"{table}[{i}].", legacy)
    if not legacy and result.get("kind") == "deploy" and not problems:
        problems += _check_deploy(result)
    return problems


def _near(a: float, b: float) -> bool:
    """Equal up to the rounding of a written ratio."""
    return math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6)


def _check_deploy(result: Mapping[str, Any]) -> list[str]:
    """What the types cannot say about a deploy file: known precisions, the file's metric on every row, one fp32
    form per student that the others are measured against (score change, speed-ups), and exactly one ``best``
    form per student — the fastest one that loses at most :data:`BEST_MAX_SCORE_DROP`."""
    problems: list[str] = []
    rows = result["rows"]
    if not rows:
        return ["rows: a deploy result needs at least one row"]
    by_student: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for i, x in enumerate(rows):
        where = f"rows[{i}]"
        if x["precision"] not in DEPLOY_PRECISIONS:
            problems.append(
                f"{where}.precision {x['precision']!r}: expected one of {list(DEPLOY_PRECISIONS)}"
            )
        if x["metric"] != result["metric"]:
            problems.append(f"{where}.metric {x['metric']!r} is not the file's metric {result['metric']!r}")
        # a row timed in its own run with the teacher carries that run's teacher latency
        t_ms = x.get("teacher_latency_ms", result["teacher_latency_ms"])
        if result["teacher"] is None or t_ms is None:
            if result["teacher"] is not None or x["speedup_vs_teacher"] is not None:
                problems.append(
                    f"{where}.speedup_vs_teacher: a file without a teacher (teacher, teacher_latency_ms null) has "
                    "none on any row, and a file with one has it on every row"
                )
        elif x["speedup_vs_teacher"] is None or not _near(x["speedup_vs_teacher"], t_ms / x["latency_ms"]):
            problems.append(
                f"{where}.speedup_vs_teacher = {x['speedup_vs_teacher']} is not teacher_latency_ms / latency_ms "
                f"({t_ms / x['latency_ms']:.4g})"
            )
        by_student.setdefault(x["student"], []).append((i, x))
    for student, forms in by_student.items():
        precisions = [x["precision"] for _, x in forms]
        if len(set(precisions)) != len(precisions):
            problems.append(f"student {student!r}: a precision is listed twice ({precisions})")
        fp32 = [x for _, x in forms if x["precision"] == "fp32"]
        if not fp32:
            problems.append(
                f"student {student!r}: no fp32 row (score_change and speedup_vs_fp32 are against it)"
            )
        else:
            ref = fp32[0]
            for i, x in forms:
                if not _near(x["score_change"], x["score"] - ref["score"]):
                    problems.append(
                        f"rows[{i}].score_change = {x['score_change']} is not score − fp32 score "
                        f"({x['score'] - ref['score']:.4g})"
                    )
                if not _near(x["speedup_vs_fp32"], ref["latency_ms"] / x["latency_ms"]):
                    problems.append(
                        f"rows[{i}].speedup_vs_fp32 = {x['speedup_vs_fp32']} is not fp32 latency / latency "
                        f"({ref['latency_ms'] / x['latency_ms']:.4g})"
                    )
        best = [i for i, x in forms if x["best"]]
        if len(best) != 1:
            problems.append(f"student {student!r}: {len(best)} rows marked best (exactly one per student)")
            continue
        drop = max_score_drop(result["metric"])
        eligible = [(x["latency_ms"], i) for i, x in forms if x["score_change"] >= -drop]
        if best[0] not in [i for _, i in eligible]:
            problems.append(
                f"rows[{best[0]}] is marked best but loses {-rows[best[0]]['score_change']:.4g} (at most {drop})"
            )
        elif eligible and rows[best[0]]["latency_ms"] > min(eligible)[0]:
            problems.append(
                f"rows[{best[0]}] is marked best but rows[{min(eligible)[1]}] is faster within the score limit"
            )
    return problems + _check_teacher_forms(result)


def _check_teacher_forms(result: Mapping[str, Any]) -> list[str]:
    """``teacher_forms`` (deploy_bench ``--teacher-forms``): the teacher's own forms, one best; each student row's
    ``speedup_vs_teacher_same_form`` / ``_best_form`` is its ``speedup_vs_teacher`` over that teacher form's."""
    forms = result.get("teacher_forms")
    if not forms:
        return []
    problems = []
    same = {t["precision"]: t for t in forms}
    best = [t for t in forms if t["best"]]
    if len(best) != 1:
        problems.append(f"teacher_forms: {len(best)} forms marked best (exactly one)")
    for i, x in enumerate(result["rows"]):
        for key, t in (
            ("same_form", same.get(x["precision"])),
            ("best_form", best[0] if len(best) == 1 else None),
        ):
            got = x.get(f"speedup_vs_teacher_{key}")
            want = None if t is None else x["speedup_vs_teacher"] / t["speedup_vs_teacher"]
            if (got is None) != (want is None) or (want is not None and not _near(got, want)):
                problems.append(
                    f"rows[{i}].speedup_vs_teacher_{key} = {got}: expected its speedup_vs_teacher over the "
                    f"teacher form's ({want})"
                )
    return problems


def check(result: Mapping[str, Any], name: str = "result") -> None:
    """Raise ``ValueError`` listing every problem of an invalid result."""
    problems = validate(result)
    if problems:
        raise ValueError(f"{name} does not match benchmarks/schema.py:\n  " + "\n  ".join(problems))


__all__ = [
    "BEST_MAX_SCORE_DROP",
    "DEPLOY_PRECISIONS",
    "KINDS",
    "POINT_METRICS",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "DeployProvenance",
    "DeployResult",
    "DeployRow",
    "DistillResult",
    "DistillRow",
    "GenerationResult",
    "LegacyDistillResult",
    "LegacyOtherResult",
    "Provenance",
    "ReplayResult",
    "ReplayRow",
    "ScoredResult",
    "Threads",
    "ThroughputResult",
    "ThroughputRow",
    "TrainedRow",
    "check",
    "is_legacy",
    "max_score_drop",
    "points_scale",
    "sample_std",
    "schema_of",
    "validate",
]
