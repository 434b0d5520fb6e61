"""`make demo`: teacher → distilled 3-layer student vs the same student without distillation, on SST-2.

Subsamples the training set so that it finishes in minutes on 2 CPU cores; prints how to run the full recipes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_SST2 = ROOT.parent / "shared" / "data" / "SST-2"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(ROOT / "demo-out"))
    p.add_argument("--teacher-examples", type=int, default=8000)
    p.add_argument("--student-examples", type=int, default=8000)
    p.add_argument("--student-epochs", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    from bertdistill.logs import quiet_hf

    quiet_hf()
    from bertdistill import distill
    from bertdistill.evaluation import compare, plot_score_vs_latency, print_table
    from bertdistill.recipes import read_recipe

    out = Path(args.out)
    data = str(SHARED_SST2) if SHARED_SST2.is_dir() else None
    data_set = [f"data.path={data}"] if data else []  # else $BERTDISTILL_DATA_DIR/SST-2, else the HF hub
    cache = [f"teacher.cache_dir={out / 'cache'}"]
    print(f"SST-2 from {data or '$BERTDISTILL_DATA_DIR/SST-2 when set, else the HF hub (nyu-mll/glue)'}")
    print(
        f"DEMO SUBSAMPLES the training set: teacher on {args.teacher_examples} examples (1 epoch), students on "
        f"{args.student_examples} examples ({args.student_epochs:g} epochs). Full recipes:\n"
        "  bertdistill finetune finetune/sst2 --output runs/teacher-sst2\n"
        "  bertdistill distill kd/sst2 --set teacher.path=runs/teacher-sst2\n"
    )
    t0 = time.time()
    teacher = distill(
        "finetune/sst2",
        [
            *data_set,
            *cache,
            f"data.max_train_examples={args.teacher_examples}",
            "train.epochs=1",
            "train.eval_every=100",
            f"output_dir={out / 'teacher'}",
        ],
    )
    print(f"teacher done in {time.time() - t0:.0f}s: {teacher.metrics}")
    common = [
        *data_set,
        *cache,
        f"teacher.path={teacher.output_dir}",
        f"data.max_train_examples={args.student_examples}",
        f"train.epochs={args.student_epochs}",
        "train.eval_every=100",
    ]
    kd = distill("kd/sst2", [*common, f"output_dir={out / 'student-kd'}"])
    print(f"kd student done at {time.time() - t0:.0f}s: {kd.metrics}")
    # the same recipe with the method swapped for plain fine-tuning: same student, data, steps and seed
    no_kd_recipe = {
        **read_recipe("kd/sst2"),
        "method": {"name": "finetune"},
    }
    nokd = distill(no_kd_recipe, [*common, f"output_dir={out / 'student-no-kd'}"])
    print(f"no-KD student done at {time.time() - t0:.0f}s: {nokd.metrics}")
    rows = compare(
        teacher.output_dir,
        [kd.output_dir, nokd.output_dir],
        labels=["teacher (MiniLM-L6)", "3-layer kd", "3-layer no-KD"],
        threads=args.threads or os.cpu_count(),
    )
    print_table(rows, teacher=rows[0])
    plot_score_vs_latency(rows, out / "score_vs_latency.png")
    print(f"plot: {out / 'score_vs_latency.png'}   total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
