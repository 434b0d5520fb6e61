"""Train several recipes ("rows", formerly "variants") over the same seeds, score each on dev, time the teacher
against every row's student in one interleaved run, and write benchmarks/results/<name>.json.

A row is ``NAME=RECIPE[:KEY=VALUE,KEY=VALUE...]``; ``RECIPE`` may be ``finetune:PATH`` for the same recipe with
``method: finetune`` (the no-KD baseline: same student init, data order, steps and seeds).

    python -m benchmarks.run_variants --name pkd_sst2_3layer --teacher ~/.cache/bertdistill/teachers/minilm-l6-sst2 \\
        --variant pkd_skip=pkd/sst2:method.strategy=skip,method.init_from=teacher \\
        --variant pkd_last=pkd/sst2:method.strategy=last,method.init_from=teacher \\
        --variant kd=kd/sst2 --variant no_kd=finetune:kd/sst2 \\
        --primary pkd_skip --baseline no_kd --seeds 1 2 3 --epochs 1 --set train.eval_every=null

Hinton KD against its no-KD baseline is the two-row case (``python -m benchmarks.run_kd`` builds it).

A finished run of the same full config (``<work>/<row>-seed<seed>``) is reused; one of another config is
retrained (``--on-mismatch error`` stops instead). Long runs: start one ``--train-only --only ROW`` job per core
(``--set train.cpu_threads=1``), then the full command scores and times on a quiet machine. ``--link-from DIR``
reuses finished runs of another benchmark (same config, checked).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from benchmarks import harness as H


def common_overrides(args: argparse.Namespace) -> list[str]:
    common = [f"teacher.path={args.teacher}", *args.overrides]
    if args.data:
        common.append(f"data.path={args.data}")
    if args.epochs is not None:
        common.append(f"train.epochs={args.epochs}")
    if args.max_train_examples:
        common.append(f"data.max_train_examples={args.max_train_examples}")
    return common


def add_table_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--data", help="data dir (default: each recipe's)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every row (repeatable)"
    )
    p.add_argument("--only", nargs="+", help="train only these rows (with --train-only)")
    p.add_argument("--train-only", action="store_true", help="train, write nothing to results/")
    p.add_argument("--threads", type=int, default=None, help="timing threads (default: all)")
    p.add_argument("--latency-sentences", type=int, default=300)
    p.add_argument("--eval-examples", type=int, help="dev subsample for scoring and timing (default: all)")
    p.add_argument(
        "--no-timing",
        dest="timing",
        action="store_false",
        help="score only; time no model (no speed-up fields)",
    )
    H.add_run_flags(p)


def run(table: H.Table, args: argparse.Namespace) -> int:
    H.quiet()
    result = H.run_table(
        table,
        timing=H.TimingOptions(
            threads=args.threads,
            n_latency=args.latency_sentences,
            max_examples=args.eval_examples,
            timing=args.timing,
        ),
        only=args.only,
        train_only=args.train_only,
        on_mismatch=args.on_mismatch,
        link_from=args.link_from,
    )
    if result is None:
        return 0
    path = H.write_result(table.name, result, args.results_dir)
    print(H.summary(result))
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None, before_run: Callable[[], None] | None = None) -> int:
    """``before_run``: a caller's own checks (e.g. that the teacher exists), run once the flags have parsed, so a
    mistyped flag is reported first."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_table_flags(p)
    p.add_argument(
        "--variant", "--row", dest="rows", action="append", required=True, help="NAME=RECIPE[:KEY=VALUE,...]"
    )
    p.add_argument("--primary", help="the row reported as student_score (default: the first)")
    p.add_argument("--baseline", default="no_kd", help="the row reported as no_kd_score ('' = none)")
    p.add_argument("--method-label", help="result 'method' field (default: the primary row's method)")
    args = p.parse_args(argv)

    rows = [H.parse_row(v) for v in args.rows]
    names = [r.name for r in rows]
    primary = args.primary or names[0]
    baseline: Any = args.baseline or None
    if primary not in names or (baseline and baseline not in names):
        raise SystemExit(f"--primary / --baseline must be among the rows {names}")
    table = H.Table(
        name=args.name,
        teacher=args.teacher,
        rows=rows,
        seeds=args.seeds,
        common=common_overrides(args),
        primary=primary,
        baseline=baseline,
        method=args.method_label,
    )
    if before_run is not None:
        before_run()
    return run(table, args)


if __name__ == "__main__":
    sys.exit(main())
