"""Where a training step's milliseconds go: the live-teacher and cached ``kd`` steps against plain fine-tuning.

The loop labels the parts of a step with ``torch.profiler.record_function`` (``bertdistill.data``: the next
collated batch; ``bertdistill.teacher``: the live forward or the cache read; ``student_forward``; ``loss``
(the method's terms and the float copies the log keeps); ``backward``; ``optimizer`` (clip, step, scheduler,
zero_grad); ``after_step``: counters, progress bar, the log line, eval / checkpoint checks). This script trains
the work of ``benchmarks/throughput.py`` (3-layer student, soft targets t = 4 + hidden MSE) for ``--steps`` steps
under the profiler and reports each label's inclusive CPU time per step (the median over the steps); ``unlabelled`` is the loop's own step
time (the median of its per-step wall clock, in the same profiled run) minus the labels' medians: the
``accumulate`` / autocast contexts and the loop's Python between the labels. A second, unprofiled run of each row
gives the profiler's own cost.

    python -m benchmarks.profile_step --teacher ~/.cache/bertdistill/teachers/minilm-l6-sst2 --steps 60 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from benchmarks import harness as H
from benchmarks.throughput import recipe

LABELS = ("data", "teacher", "student_forward", "loss", "backward", "optimizer", "after_step")
ROWS = {  # row -> (method, teacher cache, bf16)
    "kd_live": ("kd", False, False),
    "kd_cached": ("kd", True, False),
    "finetune": ("finetune", False, False),
    "kd_live_bf16": ("kd", False, True),
    "kd_cached_bf16": ("kd", True, True),
    "finetune_bf16": ("finetune", False, True),
}


def median_step_ms(history: list[dict[str, Any]], warmup: int) -> float:
    per = [r["sec_per_step"] for r in history if "loss" in r][warmup:]
    return 1000 * statistics.median(per)


def profile_row(raw: dict[str, Any], warmup: int, steps: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from bertdistill import distill

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        res = distill(raw, quiet=True)
    # each label occurs once per step: the median of its occurrences, so that one-off costs (the final
    # checkpoint inside ``after_step``, first-step allocations) do not smear over the steps
    spans: dict[str, list[float]] = {k: [] for k in LABELS}
    for ev in prof.events():
        if ev.name.startswith("bertdistill."):
            name = ev.name.split(".", 1)[1]
            if name in spans:
                spans[name].append(ev.cpu_time_total / 1000.0)  # µs -> ms, inclusive
    per_step = {k: statistics.median(v[warmup:] or v) if v else 0.0 for k, v in spans.items()}
    step_ms = median_step_ms(res.history, warmup)
    labelled = sum(per_step.values())
    return {
        "ms_per_step": per_step,
        "step_ms_profiled": step_ms,
        "unlabelled_ms": step_ms - labelled,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.speed_flags(p, name="profile_step", seed=0, threads=1)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = p.parse_args(argv)

    import torch

    from bertdistill import distill
    from bertdistill.hub import resolve_model_path
    from bertdistill.recipes import load_config

    H.quiet()
    torch.set_num_threads(args.threads)
    teacher = resolve_model_path(args.teacher)
    work = H.scratch_dir("bd-profile-")
    cache = work / "cache"
    for bf16 in (False, True):  # build the caches first (not part of a step)
        distill(
            recipe(teacher, args.data, 1, work / f"warm{bf16}", cache, "kd", True, args.seed, bf16=bf16),
            quiet=True,
        )
    rows = []
    for key in args.rows:
        method, cached, bf16 = ROWS[key]

        def raw(
            tag: str, key: str = key, method: str = method, cached: bool = cached, bf16: bool = bf16
        ) -> dict[str, Any]:
            out = work / f"{key}-{tag}"
            return recipe(teacher, args.data, args.steps, out, cache, method, cached, args.seed, bf16=bf16)

        plain = median_step_ms(distill(raw("plain"), quiet=True).history, args.warmup)
        prof = profile_row(raw("prof"), args.warmup, args.steps)
        cfg = load_config(raw("cfg"))
        rows.append(
            {
                "row": key,
                "samples_per_s": 32 * 1000 / plain,
                "samples_per_s_rounds": [32 * 1000 / plain],
                "precision": H.precision_of(cfg),
                "optimizer": H.optimizer_of(cfg),
                "threads": torch.get_num_threads(),
                "teacher_cache": cached,
                "step_ms": plain,
                **prof,
            }
        )
        print(
            f"{key}: {plain:.1f} ms/step unprofiled; "
            + ", ".join(f"{k} {v:.1f}" for k, v in prof["ms_per_step"].items())
            + f", unlabelled {prof['unlabelled_ms']:.1f} (profiled step {prof['step_ms_profiled']:.1f})",
            flush=True,
        )
    by = {r["row"]: r for r in rows}
    ref = args.rows[0]
    cfg0 = load_config(recipe(teacher, args.data, args.steps, work, cache, "kd", False, args.seed))
    out = {
        **H.provenance(
            "throughput",
            seeds=[args.seed],
            steps=args.steps,
            train_examples=args.steps * 32,
            precision=H.precision_of(cfg0),
            optimizer=H.optimizer_of(cfg0),
            train_threads=torch.get_num_threads(),
            timing_threads=None,
        ),
        "what": "training step time split by the loop's labelled ranges (torch.profiler), inclusive CPU ms per step",
        "rows": rows,
        "reference": ref,
        "ratio_vs_reference": {k: v["samples_per_s"] / by[ref]["samples_per_s"] for k, v in by.items()},
        "labels": list(LABELS),
        "batch_size": 32,
        "teacher": args.teacher,
        "work": "soft targets t=4 + hidden MSE on 3 mapped layers (kd rows); plain fine-tuning (finetune row)",
    }
    path = H.write_result(args.name, out, args.results_dir)
    print(json.dumps(rows, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
