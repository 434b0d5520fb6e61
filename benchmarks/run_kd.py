"""Distil with a recipe over several seeds, train the same student without distillation (same steps, same
seeds), score the teacher, time teacher vs student interleaved, and write benchmarks/results/<name>.json.

    python benchmarks/run_kd.py --recipe recipes/kd/sst2.yaml --teacher ~/.cache/bertdistill/teachers/minilm-l6-sst2 \
        --seeds 1 2 3 --epochs 1 --name kd_sst2_3layer
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    ROOT,
    WORK,
    command,
    machine,
    no_kd_recipe,
    speed_fields,
    today,
    train_examples,
    write_result,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/kd/sst2.yaml")
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", help="data dir (default: the recipe's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--name", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--latency-sentences", type=int, default=300)
    p.add_argument(
        "--kinds",
        nargs="+",
        default=["kd", "no_kd"],
        choices=["kd", "no_kd"],
        help="with --train-only: which runs this job trains (run two jobs in parallel, then one --reuse)",
    )
    p.add_argument("--train-only", action="store_true", help="train, write nothing to results/")
    p.add_argument(
        "--reuse", action="store_true", help="reuse finished runs of the same recipe in the work dir"
    )
    args = p.parse_args()

    from bertdistill import distill
    from bertdistill.cli import _quiet_hf
    from bertdistill.evaluation import compare

    _quiet_hf()
    recipe = ROOT / args.recipe
    work = WORK / args.name
    common = [f"teacher.path={args.teacher}", *args.overrides]
    if args.data:
        common.append(f"data.path={args.data}")
    if args.epochs is not None:
        common.append(f"train.epochs={args.epochs}")
    if args.max_train_examples:
        common.append(f"data.max_train_examples={args.max_train_examples}")

    runs: dict[str, list[dict]] = {"kd": [], "no_kd": []}
    for seed in args.seeds:
        for kind, src in (("kd", recipe), ("no_kd", no_kd_recipe(recipe))):
            if kind not in args.kinds:
                continue
            out = work / f"{kind}-seed{seed}"
            overrides = [*common, f"train.seed={seed}", f"output_dir={out}"]
            if args.reuse and (out / "metrics.json").is_file():
                # a finished run of the same recipe and overrides (checked), e.g. from a parallel --train-only job
                from bertdistill import load_config

                if load_config(out / "bertdistill.yaml") != load_config(src, overrides):
                    raise SystemExit(
                        f"{out} was made with another recipe or overrides; remove it or drop --reuse"
                    )
                metrics = json.loads((out / "metrics.json").read_text())
                log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
                steps = max(r["step"] for r in log if "loss" in r)
            else:
                res = distill(src, overrides, quiet=True)
                metrics = res.metrics
                steps = max(r["step"] for r in res.history if "loss" in r)
            runs[kind].append({"seed": seed, "dir": str(out), "metrics": metrics, "steps": steps})
            print(f"{kind} seed {seed}: {metrics}", flush=True)
    if args.train_only:
        return 0

    first_kd = Path(runs["kd"][0]["dir"])
    rows = compare(
        args.teacher,
        [first_kd],
        labels=["teacher", "student"],
        threads=args.threads,
        n_latency=args.latency_sentences,
    )
    t, s = rows
    metric = t["metric"]
    kd_scores = [r["metrics"][metric] for r in runs["kd"]]
    nokd_scores = [r["metrics"][metric] for r in runs["no_kd"]]
    cfg = json.loads((first_kd / "config.json").read_text())
    n_train = train_examples(first_kd)
    result = {
        "method": json.loads((first_kd / "metrics.json").read_text())["method"],
        "task": t["task"],
        "teacher": str(args.teacher),
        "student": f"{cfg['num_hidden_layers']}-layer copy of teacher layers {cfg.get('bertdistill_copied_layers')}",
        "metric": metric,
        "teacher_score": t["score"],
        "student_score": statistics.mean(kd_scores),
        "no_kd_score": statistics.mean(nokd_scores),
        "student_scores": kd_scores,
        "no_kd_scores": nokd_scores,
        "student_score_std": statistics.stdev(kd_scores) if len(kd_scores) > 1 else 0.0,
        "no_kd_score_std": statistics.stdev(nokd_scores) if len(nokd_scores) > 1 else 0.0,
        "retention": statistics.mean(kd_scores) / t["score"],
        **speed_fields(t, s),
        "train_examples": n_train,
        "steps": runs["kd"][0]["steps"],
        "seeds": args.seeds,
        "student_layers": cfg["num_hidden_layers"],
        "student_hidden": cfg["hidden_size"],
        "eval_examples": t["examples"],
        "recipe": args.recipe,
        "overrides": common,
        "model_selection": "score of the final model (best on dev when the recipe evaluates more than once)",
        "all_metrics": {
            "kd": [r["metrics"] for r in runs["kd"]],
            "no_kd": [r["metrics"] for r in runs["no_kd"]],
            "teacher": t["metrics"],
        },
        "command": command(),
        "date": today(),
        "machine": machine(),
    }
    path = write_result(args.name, result)
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "teacher_score",
                    "student_score",
                    "no_kd_score",
                    "retention",
                    "latency_speedup",
                    "throughput_speedup",
                )
            },
            indent=1,
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
