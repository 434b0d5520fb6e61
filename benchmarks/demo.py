"""`make demo`: where distillation pays — a narrow student that learns far more from a teacher than alone.

On SST-2, on CPU, in about 7 minutes on 2 cores (measured: 411 s, ``--record`` at the defaults, bf16 training on
a CPU with native bf16; 505 s in fp32 on an AVX-512 CPU without it, ``demo_fp32.json``; the training set is
SUBSAMPLED and the script says so). An earlier fp32 run with the seeds one after
another on one core took 1,787 s; with 800 steps (half of them intermediate) the students train a third fewer
steps, but the gain over the control fell to +0.7 / +2.5 in two seeds (+4.6 / +3.3 at the defaults, fp32):

1. the teacher: MiniLM-L6 (22.7M parameters) fine-tuned on ``--teacher-examples`` training sentences (1 epoch);
2. two students of one narrow shape (``--shape``, default 4 layers × 192 hidden, random init), each trained
   ``--steps`` steps on the same ``--student-examples`` sentences with the same seed:

   * ``control``   — the student fine-tuned on the gold labels alone (no teacher);
   * ``distilled`` — TinyBERT task distillation (Jiao et al. 2020): embeddings, hidden states and attention
     from the teacher for ``--intermediate-fraction`` (default 3/4) of the steps, then its soft predictions
     for the rest;

3. the teacher and both students scored on the whole SST-2 dev set and timed in one run (batch-1 latency,
   batch-32 throughput, medians), over ``--seeds`` (default 2), with the gain of the distilled student over
   its control per seed.

The seeds train side by side (``--jobs``, default: as many as there are seeds and cores), each in its own process
pinned to one core with one thread; the teacher trains first, on every core. ``--precision auto`` (the default)
trains the teacher and both students under bf16 autocast where the CPU computes bf16 natively (AMX / AVX-512
BF16), else in fp32 (about twice as long); every model is scored and timed in fp32.

Runs are kept in ``--out`` and reused when re-run with the same settings (a killed demo resumes). The same
steps with the CLI, at full size, are printed at the end. ``--record`` writes ``benchmarks/results/demo.json``
(the benchmark harness's schema, plus ``gain_over_control`` and ``gains_over_control``).

    make demo                       # python -m benchmarks.demo
    python -m benchmarks.demo --seeds 1 2 3 --steps 2000 --student-examples 20000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import harness as H
from benchmarks.harness import ROOT, SHARED

SHAPES = {"4x192": "minilm-4x192", "2x192": "minilm-2x192"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "demo-out"), help="runs and plot (reused when re-run)")
    p.add_argument(
        "--data",
        default=str(SHARED / "SST-2") if (SHARED / "SST-2").is_dir() else None,
        help="SST-2 dir (GLUE TSV; default: the shared data when present, else $BERTDISTILL_DATA_DIR/SST-2 or "
        "the HF hub)",
    )
    p.add_argument("--teacher", default="minilm-l6", help="the encoder fine-tuned as the teacher")
    p.add_argument("--teacher-examples", type=int, default=8000)
    p.add_argument("--student-examples", type=int, default=8000)
    p.add_argument("--shape", choices=sorted(SHAPES), default="4x192")
    p.add_argument(
        "--steps", type=int, default=1200, help="student steps (both rows; distilled: both stages)"
    )
    p.add_argument(
        "--intermediate-fraction",
        type=float,
        default=0.75,
        help="share of the distilled row's steps in TinyBERT's intermediate stage (the rest: prediction)",
    )
    p.add_argument("--lr", type=float, default=1e-4, help="both students' learning rate (every stage)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, help="CPU threads for training and timing (default: all)")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="seeds trained at a time, each in its own process pinned to its own core with one thread (default: "
        "as many as there are seeds and cores; 1 trains them one after another with --threads)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="training precision of the teacher and both students (auto, the default: bf16 where the CPU "
        "computes it natively (AMX / AVX-512 BF16), else fp32); the models are timed and scored in fp32 either way",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # internal: train one seed's rows
    p.add_argument("--latency-sentences", type=int, default=100)
    p.add_argument("--record", action="store_true", help="write benchmarks/results/<--name>.json")
    p.add_argument(
        "--name", default="demo", help="the result file's name with --record (e.g. another CPU's run)"
    )
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = max(1, min(len(args.seeds), len(os.sched_getaffinity(0))))
    args.precision_why = None  # what --precision auto found, said when the demo starts
    if args.precision == "auto":
        from bertdistill.precision import cpu_bf16

        native, args.precision_why = cpu_bf16()
        args.precision = "bf16" if native else "fp32"
    return args


def student_threads(args: argparse.Namespace) -> int | None:
    """Training and timing threads of the students: one per job when seeds run side by side (in the parent
    and in each seed's child, which sees one seed and would otherwise count one job)."""
    return 1 if args.jobs > 1 or args.child else args.threads


def mixed_precision(args: argparse.Namespace) -> str:
    return "bf16" if args.precision == "bf16" else "no"


def _recipe(name: str) -> dict[str, Any]:
    """A shipped recipe by name (``tinybert/sst2``), as a dict."""
    from bertdistill.recipes import read_recipe

    return read_recipe(name)


def teacher_config(args: argparse.Namespace, out: Path) -> Any:
    from bertdistill import load_config

    overrides = [
        f"student.path={args.teacher}",
        *([f"data.path={args.data}"] if args.data else []),
        f"data.max_train_examples={args.teacher_examples}",
        "train.epochs=1",
        "train.eval_every=null",
        f"output_dir={out / 'teacher'}",
        f"train.mixed_precision={mixed_precision(args)}",
    ]
    if args.threads:
        overrides.append(f"train.cpu_threads={args.threads}")
    return load_config(_recipe("finetune/sst2"), overrides)


def student_recipe(kind: str, args: argparse.Namespace, teacher: Path, out: Path) -> dict[str, Any]:
    """The recipe of a demo row: the shipped TinyBERT SST-2 recipe with the demo's size, for both rows; the
    control swaps the method for plain fine-tuning (same student, data, steps, lr and seed)."""
    raw = _recipe("tinybert/sst2")
    raw["teacher"] = {"path": str(teacher), "cache": True, "cache_dir": str(out / "cache")}
    raw["student"] = {"init": "random", "preset": SHAPES[args.shape]}
    raw["data"].update(max_train_examples=args.student_examples, bucket_by_length=True)
    if args.data:
        raw["data"]["path"] = args.data
    raw["train"].update(
        lr=args.lr,
        max_steps=None,
        eval_every=10**9,  # scored once, at the end: both rows report their final model (no dev selection)
        save_every=10**9,
        cpu_threads=student_threads(args),
        mixed_precision=mixed_precision(args),
        log_every=max(1, args.steps // 10),
    )
    if kind == "control":
        raw["method"] = {"name": "finetune"}
        raw["train"]["max_steps"] = args.steps
        return raw
    half = min(args.steps - 1, max(1, round(args.steps * args.intermediate_fraction)))
    raw["method"].update(
        intermediate_steps=half,
        prediction_steps=max(1, args.steps - half),
        intermediate_lr=args.lr,
        prediction_lr=args.lr,
    )
    return raw


def gains(result: dict[str, Any]) -> list[float]:
    """Distilled minus control, per seed (both rows ran the same seeds, in order)."""
    rows = {r["row"]: r for r in result["rows"]}
    d, c = rows["distilled"], rows["control"]
    if d["seeds"] != c["seeds"]:
        raise RuntimeError(f"rows ran different seeds: {d['seeds']} vs {c['seeds']}")
    return [a - b for a, b in zip(d["student_scores"], c["student_scores"], strict=True)]


def print_summary(result: dict[str, Any], per_seed: list[float]) -> None:
    rows = {r["row"]: r for r in result["rows"]}

    def pm(r: dict[str, Any]) -> str:
        return f"{100 * r['student_score']:.1f} ± {100 * (r['student_score_std'] or 0):.1f}"

    print()
    print(f"{'model':<34}{'SST-2 dev acc':>16}{'params':>10}{'batch-32 /s':>14}{'× teacher':>11}")
    print(
        f"{'teacher (MiniLM-L6, fine-tuned)':<34}{100 * result['teacher_score']:>16.1f}"
        f"{result['teacher_params'] / 1e6:>9.1f}M{result['teacher_throughput']:>14.0f}{1.0:>10.1f}×"
    )
    for name, label in (("control", "student, no teacher (control)"), ("distilled", "student, distilled")):
        r = rows[name]
        print(
            f"{label:<34}{pm(r):>16}{r['student_params'] / 1e6:>9.1f}M{r['student_throughput']:>14.0f}"
            f"{r['throughput_speedup']:>10.1f}×"
        )
    seeds = rows["distilled"]["seeds"]
    spread = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
    print(
        f"\ndistillation gained {100 * statistics.fmean(per_seed):+.1f} points over the control "
        f"(± {100 * spread:.1f} over seeds {seeds}; per seed: "
        + ", ".join(f"{100 * g:+.1f}" for g in per_seed)
        + ")"
    )


def child_argv(argv: list[str], seed: int) -> list[str]:
    """The command line of the process that trains one seed's rows: the parent's, with that seed alone."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip and not a.startswith("-"):
            continue
        skip = a == "--seeds"
        if a == "--seeds" or a.startswith("--seeds=") or a in ("--record", "--child"):
            continue
        out.append(a)
    return [*out, "--seeds", str(seed), "--child"]


def train_seeds_in_parallel(args: argparse.Namespace, argv: list[str]) -> None:
    """Every seed's two rows in a process of its own, pinned to one core (one thread); the parent then finds
    the finished runs (same configs) and only scores and times them."""
    commands = {
        f"seed {seed}": [sys.executable, "-m", "benchmarks.demo", *child_argv(argv, seed)]
        for seed in args.seeds
    }
    failed = H.run_pinned(commands, args.jobs, cwd=ROOT)
    if failed:
        raise SystemExit(f"the runs of {failed} failed (their output is above)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    H.quiet()
    out = Path(args.out).expanduser().resolve()
    t0 = time.time()
    if not args.child:
        print(
            f"SST-2 from {args.data or '$BERTDISTILL_DATA_DIR or the HF hub'}. THE DEMO SUBSAMPLES the training set: the teacher is fine-tuned on "
            f"{args.teacher_examples} sentences (1 epoch), the students train {args.steps} steps on "
            f"{args.student_examples}; seeds {args.seeds}, {args.jobs} at a time; training in {args.precision}"
            f"{f' (auto: {args.precision_why})' if args.precision_why else ''}. "
            f"Runs are kept in {out} and reused."
        )
    import torch

    teacher_cfg = teacher_config(args, out)
    # the result's ``threads`` are the students'; the teacher trains alone, on every core unless --threads
    teacher_threads = teacher_cfg.train.cpu_threads or torch.get_num_threads()
    teacher = H.run_or_reuse(teacher_cfg, out / "teacher")
    if not args.child:
        print(
            f"teacher: dev accuracy {teacher.metrics.get('accuracy', float('nan')):.4f} ({time.time() - t0:.0f}s)"
        )
    rows = [
        H.Row(
            "control",
            student_recipe("control", args, teacher.dir, out),
            label="tinybert/sst2 (method: finetune)",
        ),
        H.Row(
            "distilled",
            student_recipe("distilled", args, teacher.dir, out),
            baseline="control",
            label="tinybert/sst2 + demo settings",
        ),
    ]
    table = H.Table(name="demo", teacher=teacher.dir, rows=rows, seeds=args.seeds, primary="distilled")
    if args.child:
        H.run_table(table, work=out / "students", train_only=True)
        return 0
    if args.jobs > 1 and len(args.seeds) > 1:
        train_seeds_in_parallel(args, argv)
    result = H.run_table(
        table,
        work=out / "students",
        timing=H.TimingOptions(
            threads=student_threads(args), n_latency=args.latency_sentences, max_length=64
        ),
    )
    assert result is not None
    per_seed = gains(result)
    result["gain_over_control"] = statistics.fmean(per_seed)
    result["gains_over_control"] = per_seed
    result["demo_settings"] = {
        "teacher_examples": args.teacher_examples,
        "student_examples": args.student_examples,
        "student_steps": args.steps,
        "shape": args.shape,
        "lr": args.lr,
        "intermediate_fraction": args.intermediate_fraction,
        "teacher_train_seconds": teacher.train_seconds,
        "teacher_train_threads": teacher_threads,
        "jobs": args.jobs,
        "training_precision": args.precision,
    }
    result["total_seconds"] = round(time.time() - t0, 1)
    print_summary(result, per_seed)
    if args.record:
        print(f"wrote {H.write_result(args.name, result)}")
    print(
        f"\ntotal {time.time() - t0:.0f}s. At full size, with the CLI:\n"
        "  bertdistill finetune finetune/sst2 --output runs/teacher-sst2\n"
        "  bertdistill distill tinybert/sst2 --set teacher.path=runs/teacher-sst2 -o runs/tinybert-sst2 --control\n"
        "  bertdistill compare runs/teacher-sst2 runs/tinybert-sst2 --plot score_vs_latency.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
