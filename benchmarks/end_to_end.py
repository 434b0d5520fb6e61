"""End-to-end time to a trained student: bertdistill vs TextBrewer on the same distillation, 3 epochs of SST-2.

The figure a user feels: wall time from start (teacher loading, tokenisation, teacher cache build where the
tool has one) to a saved student, for the same work as ``benchmarks/throughput.py``: a 3-layer student copied
from the teacher (embeddings, layers 0-2, pooler, head), soft targets at t = 4 (bertdistill ``t²·KL``;
TextBrewer's CE weighted by t² = 16: the same gradients) plus the padding-masked hidden-state MSE on 3 mapped
layers (student 1, 2, 3 ↔ teacher 2, 4, 6), fused AdamW, lr 1e-4, no weight decay, no clipping, linear decay
after 6 % warm-up (TextBrewer gets bertdistill's scheduler function: the same lr at every step), batch 32,
the same length-bucketed batches in every epoch (bertdistill's sampler, reseeded per epoch for both).

Rows (each a fresh process, its own cache dir, timed by its own wall clock):

* ``textbrewer``: ``GeneralDistiller``, fp32, live teacher (TextBrewer's logit cache is not available to
  ``GeneralDistiller``, and would not hold hidden states).
* ``bertdistill_cached``: fp32, the teacher cache (logits + the 3 teacher layers) built inside the timed run.
* ``bertdistill_best``: ``train.mixed_precision=bf16`` + the cache (built under bf16 autocast) — our best
  supported setting on a CPU with native bf16.
* ``bertdistill_live`` (optional): fp32, live teacher — the same work as ``textbrewer``.

Dev accuracy of every saved student comes from the same ``bertdistill.evaluate`` call (fp32), outside the
timed region. ``--jobs 2`` runs two rows at a time, each pinned to its own core with one thread: the rows
then share the machine's memory bandwidth, which the result records.

    python -m benchmarks.end_to_end --teacher ~/.cache/bertdistill/teachers/minilm-l6-sst2 --epochs 3 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import harness as H
from benchmarks.throughput import MAP, sst2_batches
from benchmarks.throughput import recipe as throughput_recipe

ROWS = {
    # row -> (tool, precision, teacher cache)
    "textbrewer": ("textbrewer", "fp32", False),
    "bertdistill_cached": ("bertdistill", "fp32", True),
    "bertdistill_best": ("bertdistill", "bf16", True),
    "bertdistill_live": ("bertdistill", "fp32", False),
}
LR = 1e-4
WARMUP = 0.06
TEMPERATURE = 4.0


def recipe(
    teacher: str,
    data: str,
    epochs: float,
    out: Path,
    cache: Path,
    seed: int,
    precision: str,
    cached: bool,
    max_train: int | None,
) -> dict[str, Any]:
    """``benchmarks.throughput``'s work (the same method, student and losses), trained for ``epochs`` over the
    training set with a linear schedule instead of timed for a few steps."""
    raw = throughput_recipe(teacher, data, 1, out, cache, "kd", cached, seed, bf16=precision == "bf16")
    raw["data"]["max_train_examples"] = max_train
    train = raw["train"]
    del train["max_steps"]
    train.update(epochs=epochs, lr=LR, warmup_ratio=WARMUP, scheduler="linear", log_every=50)
    return raw


def run_textbrewer(
    teacher_dir: str, data: str, epochs: int, out: Path, seed: int, max_train: int | None
) -> None:
    import torch
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from transformers import AutoModelForSequenceClassification

    from bertdistill.hub import from_pretrained
    from bertdistill.students import copy_layers
    from bertdistill.training.optim import build_scheduler

    torch.manual_seed(seed)
    batches, tok = sst2_batches(teacher_dir, data, max_train, seed)
    teacher = from_pretrained(AutoModelForSequenceClassification, teacher_dir, num_labels=2).eval()
    student = copy_layers(teacher, [0, 1, 2]).train()
    teacher.config.output_hidden_states = True
    student.config.output_hidden_states = True

    def adaptor(batch, model_out):  # type: ignore[no-untyped-def]
        return {
            "logits": model_out.logits,
            "hidden": model_out.hidden_states,
            "inputs_mask": batch["attention_mask"],
        }

    total = len(batches) * epochs
    tcfg = TrainingConfig(
        device="cpu", log_dir=None, output_dir=str(out / "tb"), ckpt_frequency=1, ckpt_epoch_frequency=epochs
    )
    dcfg = DistillationConfig(
        temperature=TEMPERATURE,
        kd_loss_type="ce",
        kd_loss_weight=TEMPERATURE**2,  # bertdistill's t²·KL: the same gradients as t²·CE
        hard_label_weight=0,
        intermediate_matches=[
            {"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
            for s, t in MAP
        ],
    )
    distiller = GeneralDistiller(tcfg, dcfg, teacher, student, adaptor, adaptor)
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0, fused=True)
    warmup = int(WARMUP * total)
    with distiller:
        distiller.train(
            optimizer,
            batches,
            num_epochs=epochs,
            scheduler_class=lambda optimizer: build_scheduler(optimizer, "linear", warmup, total),
            scheduler_args={},
            max_grad_norm=-1.0,
        )
    student.config.output_hidden_states = False
    student.save_pretrained(out / "student")
    tok.save_pretrained(out / "student")


def one_row(args: argparse.Namespace) -> dict[str, Any]:
    """Run one row in this process; its wall time and the saved student's dir."""
    import torch

    torch.set_num_threads(args.threads)
    tool, precision, cached = ROWS[args.row]
    out = Path(args.work) / args.row
    start = time.perf_counter()
    build = steps_s = None
    if tool == "textbrewer":
        run_textbrewer(args.teacher, args.data, args.epochs, out, args.seed, args.max_train)
        student = out / "student"
    else:
        from bertdistill import distill

        res = distill(
            recipe(
                args.teacher,
                args.data,
                args.epochs,
                out,
                out / "cache",
                args.seed,
                precision,
                cached,
                args.max_train,
            ),
            quiet=True,
        )
        student = Path(res.output_dir)
        metas = [json.loads(m.read_text()) for m in (out / "cache").glob("**/meta.json")]
        build = sum(float(m.get("build_seconds") or 0.0) for m in metas) if metas else None  # teacher compute
        steps_s = train_loop_seconds(student / "log.jsonl")
    wall = time.perf_counter() - start
    return {
        "row": args.row,
        "wall_s": wall,
        "cache_build_s": build,
        "train_loop_s": steps_s,
        "student": str(student),
    }


def train_loop_seconds(log: Path) -> float:
    """Seconds of the training loop, from a run's ``log.jsonl`` (``sec_per_step`` times the steps of each logging
    interval: the steps and whatever ran between two log lines, such as a checkpoint). The wall time minus this and
    the cache build is the rest: loading, tokenising, writing and reading the cache, the final save."""
    total, prev = 0.0, 0
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if "sec_per_step" in rec:
            total += float(rec["sec_per_step"]) * (int(rec["step"]) - prev)
            prev = int(rec["step"])
    return total


def row_command(row: str, args: argparse.Namespace) -> list[str]:
    """The command line of the process that runs one row."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.end_to_end",
        "--row",
        row,
        "--teacher",
        args.teacher,
        "--data",
        args.data,
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--work",
        args.work,
    ]
    if args.max_train:
        cmd += ["--max-train", str(args.max_train)]
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.speed_flags(p, name="end_to_end", seed=42, threads=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1, help="rows run at a time (each pinned to its own core)")
    p.add_argument(
        "--rows",
        nargs="+",
        default=["textbrewer", "bertdistill_cached", "bertdistill_best"],
        choices=list(ROWS),
    )
    p.add_argument("--max-train", type=int, default=None, help="subsample of train (smoke runs); default all")
    p.add_argument(
        "--work",
        default=None,
        help="where the runs go, kept for a re-invocation (default: a temp dir removed at exit)",
    )
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: run one row and print JSON
    args = p.parse_args(argv)
    from bertdistill.hub import resolve_model_path

    args.teacher = resolve_model_path(args.teacher)
    if args.row:
        H.quiet()
        rec = one_row(args)
        Path(args.work, f"{args.row}.json").write_text(json.dumps(rec))
        return 0

    if not {"textbrewer", "bertdistill_cached"} <= set(args.rows):
        p.error("--rows must include textbrewer and bertdistill_cached (the headline ratio)")
    args.work = args.work or str(H.scratch_dir("bd-e2e-"))
    # a row whose record exists already ran (a re-invocation with the same --work only evaluates and merges)
    pending = [r for r in args.rows if not Path(args.work, f"{r}.json").exists()]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    failed = H.run_pinned({r: row_command(r, args) for r in pending}, args.jobs, env=env)
    if failed:
        print(f"rows failed: {failed}", file=sys.stderr)
        return 1

    import torch

    from bertdistill import evaluate

    torch.set_num_threads(args.threads)
    recs = {r: json.loads(Path(args.work, f"{r}.json").read_text()) for r in args.rows}
    rows = []
    for r in args.rows:
        tool, precision, cached = ROWS[r]
        ev = evaluate(recs[r]["student"], task="sst2", data_path=args.data, threads=args.threads)
        acc = float(ev["metrics"]["accuracy"]) if "metrics" in ev else float(ev["accuracy"])
        rows.append(
            {
                "row": r,
                "tool": tool,
                "precision": precision,
                "optimizer": "AdamW fused",
                "threads": args.threads,
                "teacher_cache": cached,
                "wall_s": recs[r]["wall_s"],
                "cache_build_s": recs[r]["cache_build_s"],
                "cache_build_share": (recs[r]["cache_build_s"] or 0.0) / recs[r]["wall_s"],
                "train_loop_s": recs[r].get("train_loop_s"),
                "dev_accuracy": acc,
            }
        )
    by = {r["row"]: r for r in rows}
    tb = by.get("textbrewer")
    ours = by.get("bertdistill_cached")
    best = by.get("bertdistill_best")
    from bertdistill.config import DataConfig
    from bertdistill.data.loading import load_examples, resolve_task

    dcfg = DataConfig(task="sst2", path=args.data, max_length=128)
    n_train = min(len(load_examples(dcfg, resolve_task(dcfg), "train")), args.max_train or 1 << 62)
    out = {
        **H.provenance(
            "end_to_end",
            seeds=[args.seed],
            steps=None,
            train_examples=n_train,
            precision="fp32",
            optimizer="AdamW fused",
            train_threads=args.threads,
            timing_threads=None,
        ),
        "what": f"wall time from start to a saved student, {args.epochs} epochs of kd (soft targets t=4 + hidden MSE on "
        "3 mapped layers), cache build included; dev accuracy of each saved student (fp32, same evaluate call)",
        "rows": rows,
        "epochs": args.epochs,
        "concurrency": f"{args.jobs} row(s) at a time, each pinned to its own core with {args.threads} thread(s)"
        if args.jobs > 1
        else "one row at a time",
        "textbrewer_optimizer": "AdamW fused",
        "bertdistill_optimizer": "AdamW fused",
        "teacher": args.teacher,
        "student": "first 3 layers of the teacher (copied)",
        "textbrewer_version": __import__("textbrewer").__version__,
    }
    if tb and ours:
        out.update(
            end_to_end_speedup=tb["wall_s"] / ours["wall_s"],
            textbrewer_wall_s=tb["wall_s"],
            bertdistill_wall_s=ours["wall_s"],
            cache_build_s=ours["cache_build_s"],
            textbrewer_dev_accuracy=tb["dev_accuracy"],
            bertdistill_dev_accuracy=ours["dev_accuracy"],
        )
    if tb and best:
        out.update(
            end_to_end_speedup_best=tb["wall_s"] / best["wall_s"],
            bertdistill_best_wall_s=best["wall_s"],
            bertdistill_best_dev_accuracy=best["dev_accuracy"],
        )
    path = H.write_result(args.name, out, args.results_dir)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    for r in rows:
        print(
            f"{r['row']:20s} {r['wall_s']:8.1f}s  cache {r['cache_build_s'] or 0:6.1f}s  dev acc {r['dev_accuracy']:.4f}"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
