"""Distil with a recipe over several seeds against the same student without distillation (same recipe with
``method: finetune``: same init, data order, steps and seeds), score the teacher, time teacher vs student, and
write benchmarks/results/<name>.json — the two-row case of ``benchmarks.run_variants`` (rows ``kd`` and
``no_kd``), kept as a short command:

    python -m benchmarks.run_kd --recipe kd/sst2 --teacher ~/.cache/bertdistill/teachers/minilm-l6-sst2 \\
        --seeds 1 2 3 --epochs 1 --set train.eval_every=null --name kd_sst2_3layer
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import harness as H
from benchmarks.run_variants import add_table_flags, common_overrides, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_table_flags(p)
    p.add_argument("--recipe", default="kd/sst2")
    p.add_argument(
        "--kinds",
        nargs="+",
        choices=["kd", "no_kd"],
        help="with --train-only: which rows this job trains (same as --only)",
    )
    args = p.parse_args(argv)
    args.only = args.only or args.kinds
    kd = H.Row("kd", args.recipe)
    table = H.Table(
        name=args.name,
        teacher=args.teacher,
        rows=[kd, kd.no_kd("no_kd")],
        seeds=args.seeds,
        common=common_overrides(args),
        primary="kd",
        baseline="no_kd",
    )
    return run(table, args)


if __name__ == "__main__":
    sys.exit(main())
