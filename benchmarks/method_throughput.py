"""Training throughput of methods against each other, in one run: samples/s of each recipe with a live
teacher and (where the method allows it) a cached one, interleaved over ``--rounds``, medians reported,
ratios against the ``--reference`` variant (default: the first one, live).

    python -m benchmarks.method_throughput --teacher ~/.cache/bertdistill/teachers/minilm-l6-sst2 \\
        --variant kd=kd/sst2 --variant pkd=pkd/sst2:method.init_from=teacher \\
        --steps 40 --rounds 3 --name throughput_pkd

Every variant trains the same number of steps on the same subsample (``steps × batch`` training examples,
bucketed batches, seed fixed); timing is the loop's own per-step wall time after ``--warmup`` steps,
excluding loading, teacher-cache building (done once, untimed, before the rounds) and saving.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness as H


def overrides(
    teacher: str, steps: int, batch: int, out: Path, cache: Path, cached: bool, threads: int
) -> list[str]:
    return [
        f"teacher.path={teacher}",
        f"teacher.cache={str(cached).lower()}",
        f"teacher.cache_dir={cache}",
        f"train.max_steps={steps}",
        f"train.batch_size={batch}",
        "train.log_every=1",
        "train.eval_every=null",
        "train.save_every=100000",
        "data.eval_split=",
        f"data.max_train_examples={steps * batch}",
        f"train.cpu_threads={threads}",
        f"output_dir={out}",
    ]


def run_once(cfg: Any, warmup: int, batch: int) -> float:
    """Samples/s of one fresh training run (never reused: this is a timing)."""
    from bertdistill import distill

    res = distill(cfg, quiet=True)
    return H.samples_per_s(res.history, batch, warmup)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument(
        "--variant", "--row", dest="rows", action="append", required=True, help="NAME=RECIPE[:KEY=VALUE,...]"
    )
    p.add_argument("--reference", help="row the ratios are relative to (default: the first, live)")
    p.add_argument("--no-cache", nargs="*", default=[], help="rows that cannot use the teacher cache")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42, help="train.seed of every run")
    p.add_argument("--set", dest="common", action="append", default=[], help="KEY=VALUE for every row")
    p.add_argument("--name", default="throughput_methods")
    p.add_argument("--results-dir", default=str(H.RESULTS))
    args = p.parse_args(argv)

    import torch

    H.quiet()
    torch.set_num_threads(args.threads)
    rows = [H.parse_row(v) for v in args.rows]
    work = H.scratch_dir("bd-mthroughput-")
    cache = work / "cache"
    # (key, row, cached)
    plans: list[tuple[str, H.Row, bool]] = []
    for row in rows:
        plans.append((f"{row.name}_live", row, False))
        if row.name not in args.no_cache:
            plans.append((f"{row.name}_cached", row, True))

    def config(row: H.Row, cached: bool, out: Path, steps: int) -> Any:
        common = [*overrides(args.teacher, steps, args.batch, out, cache, cached, args.threads), *args.common]
        return row.config(args.seed, common, out)

    # build each cache once, untimed (a real run reuses it across epochs and runs)
    for _key, row, cached in plans:
        if cached:
            run_once(config(row, True, work / "warm", args.steps), 0, args.batch)
    results: dict[str, list[float]] = {key: [] for key, *_ in plans}
    for r in range(args.rounds):
        for key, row, cached in plans:
            results[key].append(
                run_once(config(row, cached, work / f"{key}{r}", args.steps), args.warmup, args.batch)
            )
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    ref = f"{args.reference or rows[0].name}_live"
    cfgs = {key: config(row, cached, work / key, args.steps) for key, row, cached in plans}
    first = cfgs[ref]
    out = {
        **H.provenance(
            "throughput",
            seeds=[args.seed],
            steps=args.steps,
            train_examples=args.steps * args.batch,
            precision=H.precision_of(first),
            optimizer=H.optimizer_of(first),
            train_threads=args.threads,
            timing_threads=None,
        ),
        "what": "training samples/s per method recipe, live vs cached teacher, medians of interleaved rounds",
        "teacher": args.teacher,
        "rows": [
            {
                "row": key,
                "recipe": row.recipe_label(),
                "overrides": list(row.overrides),
                "teacher_cache": cached,
                "samples_per_s": med[key],
                "samples_per_s_rounds": results[key],
                "precision": H.precision_of(cfgs[key]),
                "optimizer": H.optimizer_of(cfgs[key]),
                "threads": args.threads,
            }
            for key, row, cached in plans
        ],
        "reference": ref,
        "ratio_vs_reference": {k: v / med[ref] for k, v in med.items()},
        "warmup": args.warmup,
        "batch": args.batch,
        "rounds": args.rounds,
        "overrides": args.common,
    }
    path = H.write_result(args.name, out, args.results_dir)
    for k, v in med.items():
        print(f"{k:>20}: {v:7.1f} samples/s  ({v / med[ref]:.2f}× {ref})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
