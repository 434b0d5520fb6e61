"""Training throughput of methods against each other, in one run: samples/s of each recipe with a live
teacher and (where the method allows it) a cached one, interleaved over ``--rounds``, medians reported,
ratios against the ``--reference`` variant (default: the first one, live).

    python benchmarks/method_throughput.py --teacher ~/.cache/bertdistill/teachers/minilm-l6-sst2 \\
        --variant kd=recipes/kd/sst2.yaml --variant pkd=recipes/pkd/sst2.yaml:method.init_from=teacher \\
        --steps 40 --rounds 3 --name throughput_pkd

Every variant trains the same number of steps on the same subsample (``steps × batch`` training examples,
bucketed batches, seed fixed); timing is the loop's own per-step wall time after ``--warmup`` steps,
excluding loading, teacher-cache building (done once, untimed, before the rounds) and saving.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, machine, today, write_result
from run_variants import parse_variant, recipe_source


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


def run_once(src: Any, ovr: list[str], warmup: int, batch: int) -> float:
    from bertdistill import distill

    res = distill(src, ovr, quiet=True)
    per_step = [r["sec_per_step"] for r in res.history if "loss" in r][warmup:]
    return batch * len(per_step) / sum(per_step)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--variant", action="append", required=True, help="NAME=RECIPE[:KEY=VALUE,...]")
    p.add_argument("--reference", help="variant the ratios are relative to (default: the first, live)")
    p.add_argument("--no-cache", nargs="*", default=[], help="variants that cannot use the teacher cache")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="throughput_methods")
    args = p.parse_args()

    import torch

    from bertdistill.cli import _quiet_hf

    _quiet_hf()
    torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in args.variant]
    work = Path(tempfile.mkdtemp(prefix="bd-mthroughput-"))
    cache = work / "cache"
    plans: list[tuple[str, Any, list[str], bool]] = []
    for name, recipe, vo in variants:
        plans.append((f"{name}_live", recipe_source(recipe), vo, False))
        if name not in args.no_cache:
            plans.append((f"{name}_cached", recipe_source(recipe), vo, True))
    # build each cache once, untimed (a real run reuses it across epochs and runs)
    for _key, src, vo, cached in plans:
        if cached:
            run_once(
                src,
                [
                    *overrides(
                        args.teacher, args.steps, args.batch, work / "warm", cache, True, args.threads
                    ),
                    *vo,
                ],
                0,
                args.batch,
            )
    results: dict[str, list[float]] = {key: [] for key, *_ in plans}
    for r in range(args.rounds):
        for key, src, vo, cached in plans:
            ovr = [
                *overrides(
                    args.teacher, args.steps, args.batch, work / f"{key}{r}", cache, cached, args.threads
                ),
                *vo,
            ]
            results[key].append(run_once(src, ovr, args.warmup, args.batch))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    ref = f"{args.reference or variants[0][0]}_live"
    out = {
        "what": "training samples/s per method recipe, live vs cached teacher, medians of interleaved rounds",
        "teacher": args.teacher,
        "variants": {n: {"recipe": rc, "overrides": vo} for n, rc, vo in variants},
        "samples_per_s": med,
        "samples_per_s_rounds": results,
        "reference": ref,
        "ratio_vs_reference": {k: v / med[ref] for k, v in med.items()},
        "steps": args.steps,
        "warmup": args.warmup,
        "batch": args.batch,
        "rounds": args.rounds,
        "threads": args.threads,
        "command": command(),
        "date": today(),
        "machine": machine(),
    }
    path = write_result(args.name, out)
    for k, v in med.items():
        print(f"{k:>20}: {v:7.1f} samples/s  ({v / med[ref]:.2f}× {ref})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
