"""The deployed form of each student, measured: ``python -m benchmarks.deploy_bench``.

For every student given, one :func:`bertdistill.evaluation.compare` run scores the student on the dev split in
each precision (``fp32`` eager, ``bf16`` autocast, ``int8`` dynamic quantisation, ``onnx-fp32`` and ``onnx-int8``:
exported on the fly with the parity check of :mod:`bertdistill.export`) and times every form interleaved with the
fp32 teacher, at batch 1 (latency median) and batch 32 (throughput median), on ``--threads`` threads.

The result (``kind: "deploy"``) has one row per (student, precision): ``score_change`` against the same student
in fp32 eager, ``speedup_vs_fp32`` (batch-1 latency of fp32 eager / this form's), ``speedup_vs_teacher``, and
``best``: the fastest form at batch 1 whose score is at most 0.5 point below fp32 eager (the issue's bar; 0.005 of
a fraction, 0.5 BLEU). Nothing is trained here: the students are finished runs (their dirs say how they were
trained).

Without ``--teacher`` the students are timed on their own: every speed-up is against the same student in fp32
eager, and the file's teacher fields are ``null``. This is for a student with no teacher that does its task: a
C-MLM seq2seq student, whose teacher is a masked LM and does not translate (its forms are scored by BLEU on the
task's dev split, or ``--split``, greedy: the ONNX graphs decode greedily).

``--teacher-forms`` also measures the teacher in every form (``teacher_forms``, rows of the same shape) and gives
each student row ``speedup_vs_teacher_same_form`` (against the teacher deployed the same way) and
``speedup_vs_teacher_best_form`` (against the teacher's own best form): the equal-footing speed-up, where
``speedup_vs_teacher`` credits the student with the deployment too.

``--speed S`` (FastBERT): every form exits early at ``S`` (the ONNX forms between their per-layer graphs), so the
columns above compare the forms at that speed. Each row then also has its ``mean_exit_layer``, ``flops_speedup``
and ``full_depth_latency_ms`` (the same form at full depth, timed interleaved), and is measured against the
student as trained, fp32 eager at full depth (its score from an untimed run, its latency the fp32 row's
``full_depth_latency_ms``): ``score_change_vs_full_depth``, ``speedup_vs_full_depth`` and
``best_vs_full_depth`` (the fastest form within 0.5 point of it).

    python -m benchmarks.deploy_bench --task mrpc --data ../shared/data/MRPC \\
        --teacher ~/.cache/bertdistill/teachers/minilm-l6-mrpc \\
        --student kd=~/.cache/bertdistill/deploy/mrpc/kd --student bilstm=... --threads 1 --name deploy_mrpc
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import bertdistill
from benchmarks.harness import command, commit_at_start, machine, quiet, today, write_result
from benchmarks.schema import SCHEMA_VERSION, max_score_drop, points_scale

PRECISIONS = ("fp32", "bf16", "int8", "onnx-fp32", "onnx-int8")

log = logging.getLogger("deploy_bench")


def method_of(student_dir: str | Path) -> str:
    """The method recorded in a finished run's ``bertdistill.yaml``; for a dir without one (a head written by
    ``export-task``), the method its ``config.json`` says it was exported from, else ``unknown``."""
    import yaml

    run_config = Path(student_dir) / "bertdistill.yaml"
    if not run_config.is_file():
        hf = Path(student_dir) / "config.json"
        origin = json.loads(hf.read_text()).get("bertdistill_exported_from") if hf.is_file() else None
        return str(origin.get("method", "unknown")) if isinstance(origin, Mapping) else "unknown"
    cfg = yaml.safe_load(run_config.read_text()) or {}
    method = cfg.get("method")
    return str(method.get("name") if isinstance(method, Mapping) else method or "unknown")


def deploy_rows(
    label: str, method: str, rows: Sequence[Mapping[str, Any]], has_teacher: bool = True
) -> list[dict[str, Any]]:
    """The result rows of one student from its :func:`compare` rows (teacher first unless ``has_teacher`` is
    false, then one per precision, fp32 first): score change and speed-ups against fp32 eager, and which form
    is ``best``. Without a teacher the teacher fields are ``None``."""
    teacher, forms = (rows[0], list(rows[1:])) if has_teacher else (None, list(rows))
    ref = next(r for r in forms if r["precision"] == "fp32")
    t_ms = teacher["latency_ms_median"] if teacher else None
    t_tp = teacher["throughput_per_s"] if teacher else None
    out = []
    for r in forms:
        out.append(
            {
                "name": label,
                "method": method,
                "student": r["path"],
                "precision": r["precision"],
                "runtime": r.get("runtime", "torch"),
                "metric": r["metric"],
                "score": r["score"],
                "score_change": r["score"] - ref["score"],
                "params": r.get("params"),
                "size_mb": r.get("size_mb"),
                "latency_ms": r["latency_ms_median"],
                "latency_ms_p90": r.get("latency_ms_p90"),
                "throughput": r["throughput_per_s"],
                "speedup_vs_fp32": ref["latency_ms_median"] / r["latency_ms_median"],
                "throughput_vs_fp32": r["throughput_per_s"] / ref["throughput_per_s"],
                "speedup_vs_teacher": t_ms / r["latency_ms_median"] if t_ms else None,
                "throughput_vs_teacher": r["throughput_per_s"] / t_tp if t_tp else None,
                "teacher_latency_ms": t_ms,
                "teacher_throughput": t_tp,
                "best": False,
                **({"warning": r["warning"]} if r.get("warning") else {}),
            }
        )
    _mark_best(out, "score_change", "best")
    return out


def equal_footing(rows: Sequence[dict[str, Any]], teacher_forms: Sequence[Mapping[str, Any]]) -> None:
    """Put each student form beside the teacher deployed the same way (``--teacher-forms``):
    ``speedup_vs_teacher_same_form`` (the teacher in this row's precision) and ``speedup_vs_teacher_best_form``
    (the teacher's own best form). Each is a ratio of two speed-ups over the teacher in fp32 eager, each measured
    in its own interleaved run, so the drift between runs cancels."""
    same = {t["precision"]: t for t in teacher_forms}
    best = next((t for t in teacher_forms if t["best"]), None)
    for r in rows:
        t = same.get(r["precision"])
        r["speedup_vs_teacher_same_form"] = r["speedup_vs_teacher"] / t["speedup_vs_teacher"] if t else None
        r["speedup_vs_teacher_best_form"] = (
            r["speedup_vs_teacher"] / best["speedup_vs_teacher"] if best else None
        )


def _mark_best(rows: Sequence[dict[str, Any]], change: str, flag: str) -> None:
    """``rows[i][flag] = True`` on the fastest row whose ``change`` loses at most half a point of the rows'
    metric (:func:`benchmarks.schema.max_score_drop`; else on none)."""
    for r in rows:
        r[flag] = False
    ok = [r for r in rows if r[change] >= -max_score_drop(r["metric"]) - 1e-12]
    if ok:
        min(ok, key=lambda r: r["latency_ms"])[flag] = True


def early_exit_rows(
    rows: Sequence[dict[str, Any]], forms: Sequence[Mapping[str, Any]], speed: float, full_score: float
) -> None:
    """Add to one student's deploy ``rows`` (at ``speed``) what its early exit gained, from its :func:`compare`
    ``forms`` (same order, without the teacher): exits, each form's full-depth latency, and score and speed-up
    against the student in fp32 eager at full depth (``full_score``; its latency: the fp32 form's reference)."""
    full_ms = next(f for f in forms if f["precision"] == "fp32")["reference_latency_ms_median"]
    for r, f in zip(rows, forms, strict=True):
        r["speed"] = speed
        r["mean_exit_layer"] = f["metrics"].get("mean_exit_layer")
        r["flops_speedup"] = f["metrics"].get("flops_speedup")
        r["full_depth_latency_ms"] = f.get("reference_latency_ms_median")
        r["full_depth_score"] = full_score
        r["full_depth_fp32_latency_ms"] = full_ms
        r["score_change_vs_full_depth"] = r["score"] - full_score
        r["speedup_vs_full_depth"] = full_ms / r["latency_ms"]
    _mark_best(rows, "score_change_vs_full_depth", "best_vs_full_depth")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--data", required=True, help="the task's data dir (its dev split is scored)")
    p.add_argument(
        "--teacher",
        help="the fine-tuned teacher (timed in fp32 eager); omit it for students with no teacher that does "
        "their task (C-MLM): their forms are then measured against their own fp32 eager form only",
    )
    p.add_argument("--split", default="dev", help="the split scored (default dev)")
    p.add_argument("--student", action="append", required=True, metavar="LABEL=DIR", help="repeatable")
    p.add_argument("--precision", nargs="+", default=list(PRECISIONS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latency-sentences", type=int, default=200)
    p.add_argument("--name", default=None, help="result file name (default deploy_<task>)")
    p.add_argument("--results-dir", default=None)
    p.add_argument(
        "--speed",
        type=float,
        default=None,
        help="FastBERT: early-exit threshold of every form, measured against fp32 eager at full depth",
    )
    p.add_argument(
        "--teacher-forms",
        action="store_true",
        help="also time the teacher in every form, and put each student form beside the teacher deployed the "
        "same way and in its best form (the equal-footing speed-up; the default compares with fp32 eager)",
    )
    args = p.parse_args(argv)
    quiet()
    if "fp32" not in args.precision:
        p.error("--precision must include fp32 (the reference of the others)")
    if args.teacher_forms and not args.teacher:
        p.error("--teacher-forms needs --teacher")
    precisions = ["fp32", *[q for q in args.precision if q != "fp32"]]

    from bertdistill.evaluation import compare, evaluate

    students = dict(s.split("=", 1) for s in args.student)
    teacher = str(Path(args.teacher).expanduser()) if args.teacher else None
    common: dict[str, Any] = dict(
        task=args.task,
        data_path=args.data,
        split=args.split,
        threads=args.threads,
        n_latency=args.latency_sentences,
    )

    def measure(path: str, label: str, precs: list[str]) -> list[dict[str, Any]]:
        if teacher is None:  # the student alone: its first form (fp32) is the reference of the others
            return compare(path, [], labels=[label], precisions=precs, **common)
        return compare(teacher, [path], labels=["teacher", label], precisions=precs, **common)

    if args.speed is not None:
        common["options"] = {"speed": args.speed}
    from bertdistill.export import ExportError

    rows: list[dict[str, Any]] = []
    teacher_rows = []
    # the first compare row (the teacher, or without one a student's fp32 form): the file's task, split, metric
    anchor: dict[str, Any] | None = None
    failures: dict[str, str] = {}
    for label, path in students.items():
        path = str(Path(path).expanduser())
        log.warning("deploy_bench: %s (%s)", label, path)

        precs = list(precisions)
        try:
            cmp = measure(path, label, precs)
        except ExportError as e:  # this student has no ONNX graph: its eager forms are still measured
            failures[label] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            log.warning("deploy_bench: %s: %s; measuring its eager forms only", label, failures[label])
            precs = [q for q in precs if not q.startswith("onnx")]
            cmp = measure(path, label, precs)
        mine = deploy_rows(label, method_of(path), cmp, has_teacher=teacher is not None)
        if args.speed is not None:
            full = evaluate(path, task=args.task, data_path=args.data)  # fp32 eager at full depth, untimed
            early_exit_rows(mine, cmp[1:] if teacher else cmp, args.speed, full["score"])
        rows += mine
        anchor = anchor or cmp[0]
        if teacher is not None:
            teacher_rows.append(cmp[0])
        for r in mine:
            full_depth = (
                f"  exit {r['mean_exit_layer']:.2f}  ({100 * r['score_change_vs_full_depth']:+.2f}) "
                f"x{r['speedup_vs_full_depth']:.2f} vs fp32 full depth{'  BEST' if r['best_vs_full_depth'] else ''}"
                if args.speed is not None
                else ""
            )
            k = points_scale(r["metric"])
            vs_teacher = f"x{r['speedup_vs_teacher']:.2f} vs teacher" if teacher else ""
            print(
                f"{label:12s} {r['precision']:10s} {r['metric']} {k * r['score']:.2f} "
                f"({k * r['score_change']:+.2f}) {r['latency_ms']:.2f} ms  x{r['speedup_vs_fp32']:.2f} vs fp32  "
                f"{vs_teacher}{'  BEST' if r['best'] else ''}{full_depth}",
                flush=True,
            )
    teacher_forms: list[dict[str, Any]] = []
    if args.teacher_forms and teacher is not None:  # (argparse refuses --teacher-forms without --teacher)
        log.warning("deploy_bench: the teacher in every form (%s)", teacher)
        plain = {k: v for k, v in common.items() if k != "options"}  # --speed is the students' early exit
        cmp = compare(
            teacher, [teacher], labels=["teacher", "teacher-deployed"], precisions=precisions, **plain
        )
        teacher_forms = deploy_rows("teacher", "teacher", cmp)
        teacher_rows.append(cmp[0])
        equal_footing(rows, teacher_forms)
        for r in teacher_forms:
            print(
                f"{'teacher':12s} {r['precision']:10s} {r['metric']} {100 * r['score']:.2f} "
                f"({100 * r['score_change']:+.2f}) {r['latency_ms']:.2f} ms  x{r['speedup_vs_fp32']:.2f} vs fp32"
                f"{'  BEST' if r['best'] else ''}",
                flush=True,
            )
    t = teacher_rows[0] if teacher_rows else None
    a = anchor
    assert a is not None  # argparse requires at least one --student
    result = {
        "schema_version": SCHEMA_VERSION,
        "kind": "deploy",
        "command": command(),
        "date": today(),
        "machine": machine(),
        "version": bertdistill.__version__,
        "commit": commit_at_start(),
        "threads": {"train": None, "timing": args.threads},
        "task": a["task"],
        "split": a["split"],
        "metric": a["metric"],
        "teacher": teacher,
        "teacher_score": t["score"] if t else None,
        "teacher_params": t["params"] if t else None,
        # the teacher is re-timed in each student's run: the median of those runs
        "teacher_latency_ms": (
            sorted(x["latency_ms_median"] for x in teacher_rows)[len(teacher_rows) // 2] if t else None
        ),
        "latency_sentences": args.latency_sentences,
        "throughput_batch": 32,
        "max_score_loss": max_score_drop(a["metric"]),
        "precisions": precisions,
        "speed": args.speed,
        "rows": rows,
        "export_failures": failures,
        **({"teacher_forms": teacher_forms} if teacher_forms else {}),
    }
    name = args.name or f"deploy_{args.task}"
    # what was measured survives a file the schema refuses (the raw copy goes to the system temp dir)
    raw = Path(tempfile.gettempdir()) / f"{name}.unvalidated.json"
    raw.write_text(json.dumps(result, indent=1) + "\n")
    path = write_result(name, result, args.results_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
