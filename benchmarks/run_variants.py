"""Train several recipes ("variants") over the same seeds, score each on dev, time the teacher against the
student shape once (all variants must share it), and write benchmarks/results/<name>.json.

A variant is ``NAME=RECIPE[:KEY=VALUE,KEY=VALUE...]``; ``RECIPE`` may be ``finetune:PATH`` for the same
recipe with ``method: finetune`` (the no-KD baseline: same student init, data order, steps and seeds).

    python benchmarks/run_variants.py --name pkd_sst2_3layer --teacher ~/.cache/bertdistill/teachers/minilm-l6-sst2 \\
        --variant pkd_skip=recipes/pkd/sst2.yaml:method.strategy=skip,method.init_from=teacher \\
        --variant pkd_last=recipes/pkd/sst2.yaml:method.strategy=last,method.init_from=teacher \\
        --variant kd=recipes/kd/sst2.yaml --variant no_kd=finetune:recipes/kd/sst2.yaml \\
        --primary pkd_skip --baseline no_kd --seeds 1 2 3 --epochs 1 --set train.eval_every=null

Long runs: start one ``--train-only --only VARIANT`` job per core (``--set train.cpu_threads=1``), then run
the full command with ``--reuse`` to score and time on a quiet machine. ``--link-from DIR`` reuses finished
runs of another benchmark (same recipe and overrides, checked) instead of retraining them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

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


def parse_variant(spec: str) -> tuple[str, str, list[str]]:
    name, _, rest = spec.partition("=")
    if not name or not rest:
        raise SystemExit(f"--variant {spec!r}: expected NAME=RECIPE[:KEY=VALUE,...]")
    finetune = rest.startswith("finetune:")
    if finetune:
        rest = rest[len("finetune:") :]
    recipe, _, ovr = rest.partition(":")
    overrides = [o for o in ovr.split(",") if o]
    return name, ("finetune:" if finetune else "") + recipe, overrides


def recipe_source(recipe: str) -> Any:
    if recipe.startswith("finetune:"):
        return no_kd_recipe(ROOT / recipe[len("finetune:") :])
    return ROOT / recipe


def _same_config(a: Any, b: Any) -> bool:
    da, db = a.to_dict(), b.to_dict()
    da.pop("output_dir", None)
    db.pop("output_dir", None)
    return bool(da == db)


def finished(out: Path, src: Any, overrides: list[str]) -> dict[str, Any] | None:
    from bertdistill import load_config

    if not (out / "metrics.json").is_file():
        return None
    if not _same_config(load_config(out / "bertdistill.yaml"), load_config(src, overrides)):
        raise SystemExit(f"{out} was made with another recipe or overrides; remove it or drop --reuse")
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    evals = [r for r in log if "eval" in r]
    return {
        "metrics": metrics,
        # the last evaluation = the final model; metrics.json holds the loop's selected (best-on-dev) model
        "final_metrics": {"step": evals[-1]["step"], **evals[-1]["eval"]} if evals else metrics,
        "evaluations": len(evals),
        "steps": max(r["step"] for r in log if "loss" in r),
        "sec_per_step": statistics.median(r["sec_per_step"] for r in log if "sec_per_step" in r),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--variant", action="append", required=True, help="NAME=RECIPE[:KEY=VALUE,...]")
    p.add_argument("--primary", help="the variant reported as student_score (default: the first)")
    p.add_argument("--baseline", default="no_kd", help="the variant reported as no_kd_score")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--data", help="data dir (default: each recipe's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="for every variant")
    p.add_argument("--only", nargs="+", help="train only these variants (with --train-only)")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs (same config, checked)")
    p.add_argument("--link-from", action="append", default=[], help="bench dir(s) holding finished runs")
    p.add_argument("--threads", type=int, default=None, help="timing threads (default: all)")
    p.add_argument("--latency-sentences", type=int, default=300)
    p.add_argument("--method-label", help="result 'method' field (default: the primary variant's method)")
    args = p.parse_args()

    from bertdistill import distill, load_config
    from bertdistill.cli import _quiet_hf
    from bertdistill.evaluation import compare

    _quiet_hf()
    variants = [parse_variant(v) for v in args.variant]
    names = [v[0] for v in variants]
    primary = args.primary or names[0]
    if primary not in names or (args.baseline and args.baseline not in names):
        raise SystemExit(f"--primary / --baseline must be among the variants {names}")
    common = [f"teacher.path={args.teacher}", *args.overrides]
    if args.data:
        common.append(f"data.path={args.data}")
    if args.epochs is not None:
        common.append(f"train.epochs={args.epochs}")
    if args.max_train_examples:
        common.append(f"data.max_train_examples={args.max_train_examples}")
    work = WORK / args.name

    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for seed in args.seeds:
        for name, recipe, vo in variants:
            if args.only and name not in args.only:
                continue
            src = recipe_source(recipe)
            out = work / f"{name}-seed{seed}"
            overrides = [*common, *vo, f"train.seed={seed}", f"output_dir={out}"]
            done = finished(out, src, overrides) if args.reuse else None
            for other in args.link_from:
                if done is None:
                    cand = Path(other).expanduser() / out.name
                    done = finished(cand, src, overrides)
                    if done is not None:
                        out = cand
            if done is None:
                res = distill(src, overrides, quiet=True)
                done = finished(res.output_dir, src, overrides)
                assert done is not None
            runs[name].append({"seed": seed, "dir": str(out), **done})
            print(f"{name} seed {seed}: {done['metrics']}", flush=True)
    if args.train_only:
        return 0

    first = Path(runs[primary][0]["dir"])
    t, s = compare(
        args.teacher,
        [first],
        labels=["teacher", "student"],
        threads=args.threads,
        n_latency=args.latency_sentences,
    )
    metric = t["metric"]
    table: dict[str, Any] = {}
    for name, recipe, vo in variants:
        scores = [r["metrics"][metric] for r in runs[name]]
        table[name] = {
            "recipe": recipe,
            "overrides": vo,
            "scores": scores,
            "mean": statistics.mean(scores),
            "final_scores": [r["final_metrics"][metric] for r in runs[name]],
            "final_mean": statistics.mean(r["final_metrics"][metric] for r in runs[name]),
            "evaluations": [r["evaluations"] for r in runs[name]],
            "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "retention": statistics.mean(scores) / t["score"],
            "steps": [r["steps"] for r in runs[name]],
            "train_sec_per_step_median": statistics.median(r["sec_per_step"] for r in runs[name]),
            "runs": [r["dir"] for r in runs[name]],
            "all_metrics": [r["metrics"] for r in runs[name]],
        }
    cfg = json.loads((first / "config.json").read_text())
    prim = load_config(first / "bertdistill.yaml")
    result = {
        "method": args.method_label or prim.method.name,
        "task": t["task"],
        "teacher": str(args.teacher),
        "student": f"{cfg['num_hidden_layers']} layers × {cfg['hidden_size']} ({primary}'s init: "
        f"{cfg.get('bertdistill_copied_layers', 'see recipe')})",
        "metric": metric,
        "teacher_score": t["score"],
        "primary_variant": primary,
        "student_score": table[primary]["mean"],
        "student_scores": table[primary]["scores"],
        "baseline_variant": args.baseline,
        "no_kd_score": table[args.baseline]["mean"] if args.baseline else None,
        "no_kd_scores": table[args.baseline]["scores"] if args.baseline else None,
        "retention": table[primary]["retention"],
        "best_variant": max(table, key=lambda n: table[n]["mean"]),
        "variants": table,
        **speed_fields(t, s),
        "train_examples": train_examples(first),
        "steps": table[primary]["steps"][0],
        "seeds": args.seeds,
        "student_layers": cfg["num_hidden_layers"],
        "student_hidden": cfg["hidden_size"],
        "eval_examples": t["examples"],
        "overrides": common,
        "model_selection": (
            "scores / student_score: the loop's selected model — the final one when it evaluates once, the best "
            "on dev when it evaluates more than once (e.g. at each epoch end); final_scores: the last model"
        ),
        "teacher_metrics": t["metrics"],
        "command": command(),
        "date": today(),
        "machine": machine(),
    }
    path = write_result(args.name, result)
    print(yaml.safe_dump({n: {k: v[k] for k in ("mean", "std", "retention")} for n, v in table.items()}))
    print(
        f"teacher {t['score']:.4f}; speed-up b1 {s['latency_speedup']:.2f}× b32 {s['throughput_speedup']:.2f}×"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
