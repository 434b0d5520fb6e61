"""MobileBERT on SST-2 (or MRPC, ``--task mrpc``) with a fine-tuned MiniLM-L6 teacher. Rows, every one at the same
total optimizer steps ``L·layer_steps + task_steps`` (L = 6) and the same seeds, data, batch size:

* ``progressive`` / ``joint`` / ``auxiliary`` — mobilebert/<task> with ``method.strategy``
  (the headline row is ``progressive``, over every ``--seeds``; the others over the first ``--row-seeds``);
* ``progressive-random-emb`` — progressive with random embeddings learnt in stage 0 instead of the SVD init;
* ``mobilebert-kd`` — the same student, no layer-wise transfer, Hinton KD only (``strategy: none``);
* ``nokd`` — the same student shape, random init, gold labels only (no teacher anywhere);
* ``kd-3layer`` — kd/<task>: 3 layers copied from the teacher, Hinton KD.

``--preset`` sets the student shape of every MobileBERT row. ``--transfer-data corpus`` makes the transfer stages
of the progressive / joint rows read ``--corpus`` (train splits only; ``benchmarks.make_corpus``), as the paper's
task-agnostic transfer, optionally with their own ``--transfer-teacher``; the task stage still reads the task.

Per row: dev score (mean over seeds, each seed's score), retention, parameters, size on disk, and batch-1 latency /
batch-32 throughput speed-ups against the teacher and against ``kd-3layer``, all models timed in one interleaved
run (``bertdistill.evaluation.compare``). Writes ``<results-dir>/<name>.json``: the headline row's fields at the top
level (the distillation result format of benchmarks/README.md), every row in ``rows``, the issue's goals in ``goals``.

    python -m benchmarks.mobilebert_bench --layer-steps 2000 --task-steps 6000 --seeds 1 2 3 --threads 2

Tiny smoke (≈ 1 minute): --layer-steps 2 --task-steps 4 --max-train-examples 128 --eval-examples 64
--latency-sentences 16 --seeds 1 --results-dir /tmp/mb-bench --name mb_smoke

Rows are trained (or reused on a full-config match) and timed by ``benchmarks.harness``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness as H
from benchmarks import make_corpus
from bertdistill.recipes import read_recipe

TASKS = {"sst2": "SST-2", "mrpc": "MRPC"}
ROWS = ["progressive", "joint", "auxiliary", "progressive-random-emb", "mobilebert-kd", "nokd", "kd-3layer"]
HEADLINE, KD_ROW, NO_KD_ROW = "progressive", "kd-3layer", "nokd"
LAYERS = 6


def _recipe(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """The row's config: the repo's recipe with the benchmark's shared settings (the harness adds the seed and
    the output dir)."""
    base = "kd" if row == KD_ROW else "mobilebert"
    raw: dict[str, Any] = read_recipe(f"{base}/{args.task}")
    total = LAYERS * args.layer_steps + args.task_steps
    raw["teacher"] = {"path": str(args.teacher), "cache": True}
    raw["data"].update(
        path=str(args.data),
        max_length=_max_length(args.task),  # the MobileBERT recipe's, for every row
        max_train_examples=args.max_train_examples,
        max_eval_examples=args.eval_examples,
    )
    raw["train"].update(
        batch_size=args.batch_size,
        cpu_threads=args.threads,
        eval_every=10**9,  # evaluate once, at the end: every row reports its final model
        save_every=10**9,
        log_every=max(1, total // 50),
    )
    if row == KD_ROW:
        raw["train"].update(max_steps=total, epochs=1)
        return raw
    m = raw["method"]
    m.update(layer_steps=args.layer_steps, task_steps=args.task_steps)
    if args.preset:
        m["preset"] = args.preset
    if args.transfer_data == "corpus" and row in ("progressive", "joint", "progressive-random-emb"):
        m.update(transfer_data="corpus", corpus=[str(args.corpus)], transfer_teacher=args.transfer_teacher)
    m["strategy"] = row if row in ("progressive", "joint", "auxiliary") else "progressive"
    if row == "progressive-random-emb":
        m["embedding_init"] = "random"
    if row in ("mobilebert-kd", NO_KD_ROW):
        m.update(strategy="none", task_steps=total)
    if row == NO_KD_ROW:
        m.update(task="finetune", copy_head=False)
        raw["student"] = {"init": "random"}
    return raw


def _max_length(task: str) -> int:
    return int(read_recipe(f"mobilebert/{task}")["data"]["max_length"])


def goals(by: dict[str, dict[str, Any]], teacher_params: int) -> dict[str, Any]:
    """The issue's goals, each with the numbers it was judged on."""
    head = by.get(HEADLINE)
    if head is None:
        return {}
    out: dict[str, Any] = {
        "param_ratio": teacher_params / head["student_params"],
        "params_4x_fewer": teacher_params / head["student_params"] >= 4,
        "latency_3x_faster": (head["latency_speedup"] or 0) >= 3,
        "retention_95": (head["retention"] or 0) >= 0.95,
    }
    if "joint" in by:
        out["progressive_minus_joint"] = head["student_score"] - by["joint"]["student_score"]
        out["progressive_ge_joint"] = out["progressive_minus_joint"] >= 0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="sst2")
    p.add_argument(
        "--teacher", type=Path, help="fine-tuned MiniLM-L6 dir (default ~/.cache/bertdistill/teachers/...)"
    )
    p.add_argument("--data", type=Path, help="GLUE dir (default ../shared/data/<SST-2|MRPC>)")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="all of them for the headline row")
    p.add_argument("--row-seeds", type=int, default=1, help="how many of --seeds the other rows use")
    p.add_argument(
        "--one-seed",
        nargs="+",
        choices=ROWS,
        default=[],
        help="rows that run on the first seed only, whatever --row-seeds says (secondary rows)",
    )
    p.add_argument(
        "--preset",
        help="the student shape of every MobileBERT row (a mobilebert PRESETS name; default the recipe's)",
    )
    p.add_argument(
        "--transfer-data",
        choices=["task", "corpus"],
        default="task",
        help="what the transfer stages of the progressive / joint rows read: the task's train set, or --corpus "
        "(the paper's task-agnostic transfer)",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=make_corpus.DEFAULT_OUT,
        help="raw text for --transfer-data corpus (train splits only; built by benchmarks.make_corpus if missing)",
    )
    p.add_argument(
        "--transfer-teacher",
        help="teacher of the transfer stages (e.g. the pre-trained model the fine-tuned teacher came from); "
        "default --teacher",
    )
    p.add_argument("--layer-steps", type=int, default=2000)
    p.add_argument("--task-steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-train-examples", type=int)
    p.add_argument("--eval-examples", type=int, help="dev subsample (default: the whole dev set)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-sentences", type=int, default=200)
    p.add_argument("--name", help="result file name (default mobilebert_<task>)")
    p.add_argument("--train-only", action="store_true")
    H.add_run_flags(p)
    args = p.parse_args(argv)
    H.quiet()
    args.name = args.name or f"mobilebert_{args.task}"
    args.teacher = args.teacher or Path(f"~/.cache/bertdistill/teachers/minilm-l6-{args.task}").expanduser()
    args.data = args.data or H.SHARED / TASKS[args.task]
    if args.transfer_data == "corpus":
        args.corpus = make_corpus.ensure(args.corpus, H.SHARED)

    few = tuple(args.seeds[: args.row_seeds])
    rows = [
        H.Row(
            r,
            _recipe(r, args),
            seeds=tuple(args.seeds[:1]) if r in args.one_seed else None if r == HEADLINE else few,
            baseline=NO_KD_ROW if NO_KD_ROW in args.rows else None,
            label=f"{'kd' if r == KD_ROW else 'mobilebert'}/{args.task} (+ benchmark settings)",
        )
        for r in args.rows
    ]
    primary = HEADLINE if HEADLINE in args.rows else args.rows[0]
    table = H.Table(args.name, args.teacher, rows, list(args.seeds), primary=primary, method="mobilebert")
    result = H.run_table(
        table,
        timing=H.TimingOptions(
            threads=args.threads,
            n_latency=args.latency_sentences,
            max_examples=args.eval_examples,
            max_length=_max_length(args.task),
        ),
        train_only=args.train_only,
        on_mismatch=args.on_mismatch,
        link_from=args.link_from,
    )
    if result is None:
        return 0
    from bertdistill.evaluation import size_on_disk_mb

    by = {r["row"]: r for r in result["rows"]}
    kd = by.get(KD_ROW)
    for r in result["rows"]:
        r["size_mb"] = size_on_disk_mb(r["runs"][0])
        if kd and r.get("student_latency_ms") and kd.get("student_latency_ms"):
            r["kd3_latency_speedup"] = kd["student_latency_ms"] / r["student_latency_ms"]
            r["kd3_throughput_speedup"] = r["student_throughput"] / kd["student_throughput"]
    result.update(
        {
            "student": f"mobilebert {_recipe(HEADLINE, args)['method']['preset']} (row {primary})",
            "transfer_data": args.transfer_data,
            "transfer_corpus": str(args.corpus) if args.transfer_data == "corpus" else None,
            "transfer_teacher": args.transfer_teacher,
            "layer_steps": args.layer_steps,
            "task_steps": args.task_steps,
            "total_steps_per_row": LAYERS * args.layer_steps + args.task_steps,
            "kd3_score": kd["student_score"] if kd else None,
            "kd3_latency_speedup": by[primary].get("kd3_latency_speedup"),
            "goals": goals(by, result["teacher_params"]),
        }
    )
    path = H.write_result(args.name, result, args.results_dir)
    print(H.summary(result))
    print(json.dumps(result["goals"], indent=1))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
