"""C-MLM on Multi30k De→En (the issue's protocol): the student with and without the KD term, same architecture,
steps and seed, over several seeds; test BLEU; the teacher's masked-token accuracy; training throughput; the
soft-label extraction time; the student's size and the decoding settings. Writes
``<results-dir>/<name>.json`` (kind ``generation`` of benchmarks/schema.py).

    python -m benchmarks.cmlm_bench --seeds 1 2 --beam 5                       # the recipe's full schedule
    python -m benchmarks.cmlm_bench --smoke --results-dir /tmp/smoke-cmlm      # ~1 min on CPU

1. the C-MLM teacher (cmlm/multi30k-de-en with ``method.stages=[teacher]``), trained or reused
   through ``benchmarks.harness.run_or_reuse`` — or ``--teacher DIR`` (a ``stages/teacher`` dir or a teacher-only
   run); its masked-token accuracy on the test split;
2. rows ``kd`` (``method.teacher_path`` = the teacher: stages ``soft_labels`` + ``student``; the first seed
   extracts the soft labels into the teacher cache, the others hit it — unless
   ``--max-train-pairs`` draws a subsample per seed) and ``no_kd`` (``method.alpha=0``: the
   stage ``student`` alone, no teacher), same recipe, steps and seeds, through ``harness.run_rows`` (a finished
   run of the same full config is reused, another config retrained);
3. each student's test BLEU / chrF with ``--beam`` (and greedy), sacreBLEU on detokenised output, lowercased;
   training pairs/s from each run's log (batch size / median seconds per step of the stage ``student``).

Reduced scale: ``--steps`` (every stage), ``--max-train-pairs``, ``--max-test-pairs``, ``--seeds``,
``--threads``; ``--smoke`` = a 1+1-layer 32-wide student, 4 steps per stage, 64 training and 16 test pairs. Other
corpora: ``--data DIR`` (``--test-split dev`` where a corpus has no test targets, e.g. the OpenNMT toy En-De).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness as H

RECIPE = "cmlm/multi30k-de-en"
SMOKE = [
    "student.config_overrides={d_model: 32, encoder_layers: 1, decoder_layers: 1, encoder_attention_heads: 2, "
    "decoder_attention_heads: 2, encoder_ffn_dim: 64, decoder_ffn_dim: 64}",
    "data.max_eval_examples=16",
    "train.eval_every=null",
    "method.teacher_batch_size=8",
    "method.student_batch_size=8",
    "teacher.batch_size=16",
    "data.max_length=48",
]
DECODING = {"length_penalty": 1.0, "max_new_tokens": "1.5 × source + 10"}


def _log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / H.LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def pairs_per_s(run_dir: Path, config: Any, stage: str) -> float | None:
    """Training pairs per second of a stage: batch size / median seconds per optimizer step (from the log)."""
    batch = getattr(config.method, f"{stage}_batch_size", None) or config.train.batch_size
    steps = [r["sec_per_step"] for r in _log(run_dir) if r.get("stage") == stage and "sec_per_step" in r]
    return batch / statistics.median(steps) if steps else None


def extraction(run_dir: Path) -> dict[str, Any] | None:
    """The soft-label stage's record: extraction seconds, pairs/s, whether the cache was already there, and how
    much the soft labels say at the run's temperature (``sharpness``: mean p(top-1), entropy share of uniform,
    top-1 to k-th logit gap; ``None`` from runs older than that record)."""
    rec = next((r for r in _log(run_dir) if r.get("stage") == "soft_labels"), None)
    if rec is None:
        return None
    keys = ("examples", "build_seconds", "examples_per_s", "cache_hit", "seconds")
    return {**{k: rec.get(k) for k in keys}, "sharpness": rec.get("soft_labels")}


def teacher_training(rec: Any) -> dict[str, Any] | None:
    """How the C-MLM teacher was trained (pairs, epochs, steps, precision, threads, median s/step), from its run; ``None``
    for a teacher dir that is not a run (e.g. a full run's ``stages/teacher``)."""
    if rec is None:
        return None
    c = rec.config
    return {
        "train_examples": H.train_examples(c),
        "epochs": c.method.teacher_epochs,
        "steps": rec.stage_steps.get("teacher", rec.steps),
        "precision": H.precision_of(c),
        "threads": c.train.cpu_threads,
        "sec_per_step": rec.sec_per_step,
    }


def dev_bleu(rec: H.RunRecord) -> float | None:
    """The dev BLEU (greedy, the run's own model selection) of the checkpoint the run kept (its ``metrics.json``,
    already read into the record): what a choice between settings (e.g. the temperature) may be made on, where the
    test BLEU may not. ``None`` when the run kept no evaluation."""
    return rec.metrics.get("bleu")


def score(run_dir: Path, beams: list[int], split: str, max_examples: int | None) -> dict[str, Any]:
    """Test metrics of a student with each beam size, and its size."""
    from bertdistill import evaluate

    out: dict[str, Any] = {}
    for b in beams:
        row = evaluate(run_dir, split=split, beam=b, max_examples=max_examples, batch_size=128)
        out[f"beam{b}"] = row["metrics"]
        out.update(
            params=row["params"], layers=row["layers"], hidden=row["hidden"], size_mb=row.get("size_mb")
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", help="result name (default cmlm_multi30k; another --data: cmlm_<its dir name>)")
    p.add_argument(
        "--data",
        type=Path,
        default=H.SHARED / "Multi30k-de-en",
        help="parallel corpus dir (default: the shared Multi30k-de-en; train/val/test .de/.en)",
    )
    p.add_argument("--test-split", default="test", help="the split BLEU and teacher accuracy are measured on")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--teacher", help="an existing C-MLM teacher dir (skips the teacher run)")
    p.add_argument(
        "--beam", type=int, default=5, help="beam size of the reported test BLEU (greedy is added)"
    )
    p.add_argument("--steps", type=int, help="cap every stage at this many steps (train.max_steps)")
    p.add_argument("--max-train-pairs", "--max-train-examples", dest="max_train_pairs", type=int)
    p.add_argument("--max-test-pairs", "--max-test-examples", dest="max_test_pairs", type=int)
    p.add_argument("--threads", type=int, help="training threads (train.cpu_threads)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="extra recipe overrides (all runs)"
    )
    p.add_argument(
        "--kd-set",
        dest="kd_overrides",
        action="append",
        default=[],
        help="overrides of the kd row only (e.g. method.temperature=2): the no_kd control stays as it was, "
        "so --link-from can reuse it",
    )
    p.add_argument("--smoke", action="store_true", help="tiny settings (see above)")
    p.add_argument(
        "--train-only",
        nargs="+",
        choices=["kd", "no_kd"],
        metavar="ROW",
        help="train only these rows (kd, no_kd) and write no result: one core's share of a parallel sweep; "
        "run again without it (same --name, or --link-from) to score both rows and write the result",
    )
    H.add_run_flags(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.steps = args.steps or 4
        args.max_train_pairs = args.max_train_pairs or 64
        args.max_test_pairs = args.max_test_pairs or 16
    if args.name is None:
        default = args.data.name == "Multi30k-de-en"
        args.name = "cmlm_multi30k" if default else "cmlm_" + args.data.name.lower().replace("-", "_")
    if args.smoke and Path(args.results_dir) == H.RESULTS:  # a smoke result never lands in results/
        args.results_dir = str(H.WORK / (args.name + "-smoke"))
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} not found")
    return args


def common_overrides(args: argparse.Namespace, work: Path) -> list[str]:
    common = [f"data.path={args.data}", f"teacher.cache_dir={work / 'cache'}"]
    common += SMOKE if args.smoke else []
    if args.steps:
        common.append(f"train.max_steps={args.steps}")
    if args.max_train_pairs:
        common.append(f"data.max_train_examples={args.max_train_pairs}")
    if args.threads:
        common.append(f"train.cpu_threads={args.threads}")
    # a --set of the same key replaces the default here, so the result file lists each key once
    mine = {o.split("=", 1)[0] for o in args.overrides}
    return [*(o for o in common if o.split("=", 1)[0] not in mine), *args.overrides]


def bench_rows(args: argparse.Namespace, teacher: Path) -> list[H.Row]:
    """The student with the KD term (plus the ``--kd-set`` overrides) and its control without it."""
    return [
        H.Row("kd", RECIPE, (f"method.teacher_path={teacher}", *args.kd_overrides), baseline="no_kd"),
        H.Row("no_kd", RECIPE, ("method.alpha=0.0",)),
    ]


def main(argv: list[str] | None = None) -> int:
    from bertdistill import evaluate, load_config

    args = parse_args(argv)
    H.quiet()
    work = H.WORK / (args.name + ("-smoke" if args.smoke else ""))
    common = common_overrides(args, work)
    if args.teacher:
        teacher = Path(args.teacher).expanduser()
        # a teacher-only run dir (not a stages/teacher dir) says how the teacher was trained: record it
        teacher_rec = H.read_run(teacher) if H.is_finished(teacher) else None
    else:
        cfg = load_config(RECIPE, [*common, "method.stages=[teacher]"])
        teacher_rec = H.run_or_reuse(cfg, work / "teacher", on_mismatch=args.on_mismatch)
        teacher = teacher_rec.dir
    rows = bench_rows(args, teacher)
    runs = H.run_rows(
        rows,
        args.seeds,
        work,
        common,
        only=args.train_only,
        on_mismatch=args.on_mismatch,
        link_from=args.link_from,
    )
    if args.train_only:
        print(f"trained {args.train_only} in {work}; no result written (--train-only)")
        return 0
    teacher_row = evaluate(teacher, split=args.test_split, max_examples=args.max_test_pairs, batch_size=64)
    beams = sorted({args.beam, 1})
    key = f"beam{args.beam}"
    scored = {
        name: [score(r.dir, beams, args.test_split, args.max_test_pairs) for r in recs]
        for name, recs in runs.items()
    }
    bleu = {name: [s[key]["bleu"] for s in scored[name]] for name in runs}
    out_rows = []
    for row in rows:
        recs, first = runs[row.name], runs[row.name][0]
        out_rows.append(
            {
                "row": row.name,
                "method": first.config.method.name,
                "recipe": row.recipe_label(),
                "overrides": list(row.overrides),
                "seeds": [r.seed for r in recs],
                **H.score_fields("student_score", bleu[row.name]),
                **H.score_fields("greedy_score", [s["beam1"]["bleu"] for s in scored[row.name]]),
                "test_metrics": [s[key] for s in scored[row.name]],
                "dev_scores": [dev_bleu(r) for r in recs],
                "steps": first.steps,
                "stage_steps": first.stage_steps,
                "train_examples": H.train_examples(first.config),
                "precision": H.precision_of(first.config),
                "optimizer": H.optimizer_of(first.config),
                "train_threads": first.config.train.cpu_threads,
                "student_params": scored[row.name][0]["params"],
                "student_size_mb": scored[row.name][0]["size_mb"],
                "train_pairs_per_s": [pairs_per_s(r.dir, r.config, "student") for r in recs],
                "soft_labels": [extraction(r.dir) for r in recs] if row.name == "kd" else None,
                "train_seconds": [r.train_seconds for r in recs],
                "runs": [str(r.dir) for r in recs],
            }
        )
    kd, prim = runs["kd"][0], out_rows[0]
    s = scored["kd"][0]
    result = {
        **H.provenance(
            "generation",
            seeds=args.seeds,
            steps=prim["steps"],
            train_examples=prim["train_examples"],
            precision=prim["precision"],
            optimizer=prim["optimizer"],
            train_threads=prim["train_threads"],
            timing_threads=None,
        ),
        "method": "cmlm",
        "task": f"translation ({args.data.name})",
        "teacher": str(teacher),
        "student": f"M2M100 {s['layers']} layers × {s['hidden']} (random init, the teacher's WordPiece vocabulary)",
        "metric": f"bleu ({args.test_split}, beam {args.beam}, sacreBLEU lowercased)",
        "teacher_metric": "masked-token accuracy (C-MLM, every target token masked once over 7 copies)",
        "teacher_score": teacher_row["score"],
        "teacher_params": teacher_row["params"],
        "teacher_train_pairs_per_s": pairs_per_s(teacher, teacher_rec.config, "teacher")
        if teacher_rec
        else None,
        "teacher_training": teacher_training(teacher_rec),
        "primary_row": "kd",
        "baseline_row": "no_kd",
        **{k: prim[k] for k in ("student_score", "student_score_std", "student_scores")},
        **H.score_fields("no_kd_score", bleu["no_kd"]),
        **H.score_fields("kd_gain", [a - b for a, b in zip(bleu["kd"], bleu["no_kd"], strict=True)]),
        "student_params": prim["student_params"],
        "student_size_mb": prim["student_size_mb"],
        "student_layers": s["layers"],
        "student_hidden": s["hidden"],
        "soft_label_extraction": extraction(kd.dir),
        "kd_train_pairs_per_s": prim["train_pairs_per_s"],
        "no_kd_train_pairs_per_s": out_rows[1]["train_pairs_per_s"],
        "decoding": {"beam": args.beam, "greedy_also": True, **DECODING},
        "test_examples": teacher_row.get("examples"),
        "overrides": common,
        "rows": out_rows,
    }
    result["goal_plus_1_bleu_every_seed"] = all(d >= 1.0 for d in result["kd_gains"])
    path = H.write_result(args.name, result, args.results_dir)
    print(
        json.dumps(
            {k: result[k] for k in ("student_scores", "no_kd_scores", "kd_gains", "teacher_score")}, indent=1
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
