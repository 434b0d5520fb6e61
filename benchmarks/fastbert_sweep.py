"""FastBERT speed sweep: accuracy, mean exit layer, FLOPs speed-up and *measured* CPU speed-up (batch 1 and
batch 32) for speed = 0, 0.1, …, 0.9, against the same model at full depth without branches — which is
exactly the fine-tuned teacher's computation — timed interleaved in one run.

    python benchmarks/fastbert_sweep.py --teacher ~/.cache/bertdistill/teachers/minilm-l6-sst2 --name fastbert_sst2

Trains the branches with recipes/fastbert/<task>.yaml unless --model gives a trained FastBERT dir;
``--ablation`` also trains branches on gold labels instead of self-distillation (the "no KD" row).
Writes benchmarks/results/<name>.json and <name>.png (accuracy vs measured speed-up).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, WORK, command, machine, today, train_examples, write_result


def train(recipe: Path, teacher: str, out: Path, seed: int, extra: list[str]) -> tuple[Path, int]:
    from bertdistill import distill

    res = distill(
        recipe, [f"teacher.path={teacher}", f"output_dir={out}", f"train.seed={seed}", *extra], quiet=True
    )
    steps = max(r["step"] for r in res.history if "loss" in r)
    return res.output_dir, steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--recipe", default="recipes/fastbert/sst2.yaml")
    p.add_argument("--model", help="an already trained FastBERT dir (skips training)")
    p.add_argument("--speeds", type=float, nargs="+", default=[round(0.1 * i, 1) for i in range(10)])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument(
        "--ablation", action="store_true", help="also train branches on labels (no self-distillation)"
    )
    p.add_argument(
        "--kd-result",
        default=str(RESULTS / "kd_sst2_3layer.json"),
        help="a kd result file to compare against (static student)",
    )
    p.add_argument("--latency-sentences", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", required=True)
    args = p.parse_args()

    from bertdistill.cli import _quiet_hf
    from bertdistill.evaluation import early_exit_row, load_model

    _quiet_hf()
    work = WORK / args.name
    steps = None
    if args.model:
        model_dir = Path(args.model)
    else:
        model_dir, steps = train(
            ROOT / args.recipe, args.teacher, work / "fastbert", args.seed, args.overrides
        )
    lm = load_model(model_dir)
    rows = []
    for s in args.speeds:
        r = early_exit_row(lm, s, threads=args.threads, n_latency=args.latency_sentences)
        rows.append(r)
        print(
            f"speed {s:.1f}: acc {r['score']:.4f}, exit {r['mean_exit_layer']:.2f}, FLOPs x{r['flops_speedup']:.2f}, "
            f"measured b1 x{r['latency_speedup']:.2f}, b32 x{r['throughput_speedup']:.2f}",
            flush=True,
        )
    teacher_score = rows[0]["score"] if args.speeds[0] == 0 else None
    if teacher_score is None:
        raise SystemExit("the sweep must start at speed 0 (the teacher's computation)")
    ok = [r for r in rows if r["score"] >= teacher_score - 0.005]
    chosen = max(ok, key=lambda r: r["latency_speedup"])

    no_kd = None
    if args.ablation:
        abl_dir, _ = train(
            ROOT / args.recipe,
            args.teacher,
            work / "fastbert-labels",
            args.seed,
            [*args.overrides, "method.use_labels=true"],
        )
        abl = early_exit_row(load_model(abl_dir), chosen["speed"], threads=args.threads, timing=False)
        no_kd = abl["score"]
        print(
            f"label-trained branches at speed {chosen['speed']}: {no_kd:.4f} (exit {abl['mean_exit_layer']:.2f})"
        )

    kd = json.loads(Path(args.kd_result).read_text()) if Path(args.kd_result).is_file() else None
    plot = RESULTS / f"{args.name}.png"
    _plot(rows, kd, plot)
    n_train = train_examples(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    teacher_params = sum(v.numel() for k, v in lm.model.state_dict().items() if not k.startswith("branches."))
    result = {
        "method": "fastbert",
        "task": rows[0]["task"],
        "teacher": args.teacher,
        "student": f"teacher + {len(lm.model.branches)} branch classifiers (width {cfg['branch_hidden']}, "
        f"{cfg['branch_heads']} heads), early exit at speed {chosen['speed']}",
        "metric": rows[0]["metric"],
        "teacher_score": teacher_score,
        "student_score": chosen["score"],
        "no_kd_score": no_kd,
        "no_kd_definition": "branches trained on gold labels (method.use_labels) instead of "
        "self-distillation, same steps and seed, at the same speed"
        if no_kd is not None
        else "not run",
        "retention": chosen["score"] / teacher_score,
        "chosen_speed": chosen["speed"],
        "chosen_rule": "the speed with the largest measured batch-1 speed-up among those within 0.5 point of speed 0",
        "teacher_params": teacher_params,
        "student_params": rows[0]["params"],
        "latency_speedup": chosen["latency_speedup"],
        "throughput_speedup": chosen["throughput_speedup"],
        "flops_speedup": chosen["flops_speedup"],
        "mean_exit_layer": chosen["mean_exit_layer"],
        "train_examples": n_train,
        "steps": steps,
        "seeds": [args.seed],
        "student_layers": cfg["backbone"]["num_hidden_layers"],
        "student_hidden": cfg["backbone"]["hidden_size"],
        "sweep": [
            {
                k: r[k]
                for k in (
                    "speed",
                    "score",
                    "mean_exit_layer",
                    "flops_speedup",
                    "latency_speedup",
                    "throughput_speedup",
                    "latency_ms_median",
                    "throughput_per_s",
                    "full_depth_latency_ms",
                    "full_depth_throughput_per_s",
                )
            }
            for r in rows
        ],
        "static_kd_student": {
            k: kd[k] for k in ("student_score", "latency_speedup", "throughput_speedup", "student_layers")
        }
        if kd
        else None,
        "plot": str(plot.relative_to(ROOT)),
        "latency_sentences": args.latency_sentences,
        "command": command(),
        "date": today(),
        "machine": machine(),
    }
    path = write_result(args.name, result)
    print(f"wrote {path} and {plot}")
    return 0


def _plot(rows: list[dict], kd: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for key, label, marker in (
        ("latency_speedup", "FastBERT, batch 1", "o-"),
        ("throughput_speedup", "FastBERT, batch 32", "s--"),
        ("flops_speedup", "FastBERT, FLOPs", "^:"),
    ):
        ax.plot([r[key] for r in rows], [100 * r["score"] for r in rows], marker, label=label, ms=4)
    for r in rows[::3]:
        ax.annotate(
            f"{r['speed']:.1f}",
            (r["latency_speedup"], 100 * r["score"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    if kd:
        ax.scatter(
            [kd["latency_speedup"]],
            [100 * kd["student_score"]],
            marker="*",
            s=120,
            color="k",
            label=f"static {kd['student_layers']}-layer kd student (b1)",
        )
    ax.axhline(100 * rows[0]["score"], color="gray", lw=0.8, ls=":")
    ax.set_xlabel("speed-up over the teacher (measured on CPU unless FLOPs)")
    ax.set_ylabel(f"{rows[0]['metric']} (%, {rows[0]['task']} dev)")
    ax.set_title("FastBERT: accuracy vs speed-up (labels: speed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
