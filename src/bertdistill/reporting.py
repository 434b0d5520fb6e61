"""Tables and plots of evaluation rows (:func:`bertdistill.evaluation.compare`)."""

from __future__ import annotations

import os
import sys
from typing import Any

SUMMARY_METRICS = ("mean_exit_layer", "flops_speedup")
"""Per-model summaries some runners add to their metrics (shown as columns when present)."""


def print_table(rows: list[dict[str, Any]], teacher: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    timing = "latency_ms_median" in rows[0]
    base = rows[0]["metrics"].get("majority_baseline")
    title = f"{rows[0]['task']} ({rows[0]['split']}, {rows[0]['examples']} examples)"
    if base is not None:
        title += f" — majority-class baseline {rows[0]['metric']} {base:.4f}"
    table = Table(title=title)
    cols = ["model", rows[0]["metric"], "params", "size MB", "layers×hidden"]
    extra = [m for m in SUMMARY_METRICS if any(m in r["metrics"] for r in rows)]
    cols += extra
    if timing:
        cols += ["latency b1 ms (p50/p90)", "b32 samples/s"]
    reference = timing and any("reference_latency_speedup" in r for r in rows)
    if reference:
        cols += ["vs reference b1 / b32"]
    if teacher is not None and len(rows) > 1:
        cols += ["retention", "latency speed-up", "throughput speed-up"]
    for c in cols:
        table.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        shape = f"{r['layers']}×{r['hidden']}" if r.get("layers") else "-"
        cells = [
            r["name"],
            f"{r['score']:.4f}",
            f"{r['params'] / 1e6:.1f}M",
            f"{r['size_mb']:.1f}" if r.get("size_mb") else "-",
            shape,
        ]
        cells += [f"{r['metrics'][m]:.2f}" if m in r["metrics"] else "-" for m in extra]
        if timing:
            cells += [
                f"{r['latency_ms_median']:.1f} / {r['latency_ms_p90']:.1f}",
                f"{r['throughput_per_s']:.0f}",
            ]
        if reference:
            cells += [
                f"{r['reference_latency_speedup']:.2f}× / {r['reference_throughput_speedup']:.2f}×"
                if "reference_latency_speedup" in r
                else "-"
            ]
        if teacher is not None and len(rows) > 1:
            if r is teacher:
                cells += ["100.0%", "1.00×", "1.00×"]
            else:
                cells += [
                    f"{100 * r['retention']:.1f}%" if r.get("retention") is not None else "-",
                    f"{r['latency_speedup']:.2f}×" if timing else "-",
                    f"{r['throughput_speedup']:.2f}×" if timing else "-",
                ]
        table.add_row(*cells)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    for r in rows:
        if r.get("warning"):
            console.print(f"[yellow]warning:[/yellow] {r['warning']}", highlight=False)


def plot_score_vs_latency(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(rows):
        ax.scatter(r["latency_ms_median"], r["score"], s=40 + r["params"] / 5e5)
        # stagger the labels: students often sit close together
        ax.annotate(
            r["name"],
            (r["latency_ms_median"], r["score"]),
            textcoords="offset points",
            xytext=(6, 6 + 11 * (i % 3)),
            fontsize=8,
        )
    ax.set_xlabel("CPU latency, batch 1, median (ms)")
    ax.set_ylabel(f"{rows[0]['metric']} ({rows[0]['task']} {rows[0]['split']})")
    ax.set_title("score vs latency (marker size ~ parameters)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["plot_score_vs_latency", "print_table"]
