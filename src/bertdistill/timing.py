"""CPU latency and throughput, measured fairly on a shared, noisy machine.

Rules: a fixed thread count, warm-up first, the models timed *interleaved* (sentence by sentence for latency,
alternating who goes first; round by round for throughput) so that load spikes hit every model alike, medians
reported. Timings cover the model call on pre-collated batches (tokenisation and collation excluded).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

Batch = Mapping[str, Any]
Timed = Callable[[Batch], Any]


def make_batches(
    data: Any, collate: Callable[[list[dict[str, Any]]], dict[str, Any]], batch_size: int, n: int
) -> list[dict[str, Any]]:
    """The first ``n`` examples of ``data`` in collated batches of ``batch_size`` (in dataset order)."""
    idx = list(range(min(n, len(data))))
    return [collate([data[i] for i in idx[s : s + batch_size]]) for s in range(0, len(idx), batch_size)]


def _rows(batch: Batch) -> int:
    return int(batch["inputs"]["input_ids"].shape[0])


@torch.inference_mode()
def measure_speed(
    fns: Sequence[Timed],
    singles: Sequence[Sequence[Batch]],
    bulks: Sequence[Sequence[Batch]],
    rounds: int = 3,
    threads: int | None = None,
    warmup: int = 10,
) -> list[dict[str, float]]:
    """Batch-1 latency (median and p90 over the ``singles`` of each model) and throughput (samples/s, median of
    ``rounds`` passes over its ``bulks``); ``fns[k]`` is called on model k's own batches, all timed
    interleaved."""
    if threads:
        torch.set_num_threads(threads)
    for fn, s in zip(fns, singles, strict=True):  # warm-up
        for b in s[:warmup]:
            fn(b)
    lat: list[list[float]] = [[] for _ in fns]
    n = min(len(s) for s in singles)
    for i in range(n):
        order = list(range(len(fns)))
        if i % 2:
            order.reverse()  # alternate who goes first
        for k in order:
            t0 = time.perf_counter()
            fns[k](singles[k][i])
            lat[k].append(time.perf_counter() - t0)
    thr: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        order = list(range(len(fns)))
        if r % 2:
            order.reverse()
        for k in order:
            t0 = time.perf_counter()
            count = 0
            for b in bulks[k]:
                fns[k](b)
                count += _rows(b)
            thr[k].append(count / (time.perf_counter() - t0))
    out = []
    for k in range(len(fns)):
        arr = np.array(lat[k]) * 1000
        out.append(
            {
                "latency_ms_median": float(np.median(arr)),
                "latency_ms_p90": float(np.percentile(arr, 90)),
                "throughput_per_s": float(statistics.median(thr[k])),
                "latency_sentences": len(arr),
                "threads": torch.get_num_threads(),
            }
        )
    return out


__all__ = ["make_batches", "measure_speed"]
