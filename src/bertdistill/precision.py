"""Inference precision for ``evaluate`` / ``compare``: fp32, bf16 autocast, dynamic int8, ONNX Runtime fp32 / int8.

* ``bf16``: the model's forward under ``torch.autocast`` (CPU: bfloat16). Fast only where the CPU computes bf16
  natively (AVX-512 BF16 / AMX, see :func:`cpu_bf16`); elsewhere it is emulated and usually *slower* than fp32,
  which :func:`cpu_bf16` says so that the caller can log it.
* ``int8``: ``torch.ao.quantization.quantize_dynamic`` of a copy of the model's ``nn.Linear`` (and ``nn.LSTM``)
  layers: int8 weights, activations quantised on the fly; CPU only.
* ``onnx-fp32`` / ``onnx-int8``: the model exported to ONNX (int8: ONNX Runtime's dynamic quantisation) and run
  by ONNX Runtime (:mod:`bertdistill.export`): an export dir's own graphs, or an eager model exported on the fly.

A precision applies to a loaded :class:`~bertdistill.protocol.Runner` through :func:`with_precision`, which
returns a new runner and leaves the given one as it was.
"""

from __future__ import annotations

import copy
import functools
import logging
import platform
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .config import ConfigError

PRECISIONS = ("fp32", "bf16", "int8", "onnx-fp32", "onnx-int8")

log = logging.getLogger(__name__)


# x86 instruction sets that compute bf16 in hardware, and torch's probe of each (``torch.cpu``, private)
_X86_BF16 = {"AMX": "_is_amx_tile_supported", "AVX-512 BF16": "_is_avx512_bf16_supported"}


def _x86_bf16_sets(probe: Any = None) -> list[str] | None:
    """The bf16 instruction sets of this x86 CPU (``None``: torch has no probe). ``probe`` stands in for
    ``torch.cpu`` in tests."""
    probe = torch.cpu if probe is None else probe
    found = []
    for name, attr in _X86_BF16.items():
        check = getattr(probe, attr, None)
        if check is None:
            return None
        if check():
            found.append(name)
    return found


@functools.cache
def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and a sentence saying what was found.

    On x86 that means AMX or AVX-512 BF16. oneDNN's own "bf16 supported" is not the test there: it also holds on
    AVX-512 CPUs without either, where bf16 is emulated — a training step ran 3.4× slower than fp32 on
    such a Xeon. Elsewhere (e.g. Arm) oneDNN's check is what there is."""
    capability = torch.backends.cpu.get_cpu_capability()
    sets = _x86_bf16_sets() if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86") else None
    if sets is None:
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # pragma: no cover - older or oneDNN-less builds
            native = False
        sets = ["oneDNN bf16 support"] if native else []
    if sets:
        return True, f"this CPU computes bf16 natively ({', '.join(sets)}; torch capability {capability})"
    return False, (
        f"this CPU has no native bf16 (torch capability {capability}, no AVX-512 BF16 / AMX): bf16 is emulated "
        "and usually slower than fp32 here"
    )


def _autocast(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(*args, **kwargs)

    return run


def quantize_int8(model: nn.Module) -> nn.Module:
    """A dynamically int8-quantised copy of ``model`` (its Linear and LSTM layers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices: the API still works in this torch
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear, nn.LSTM}, dtype=torch.qint8
        )


def with_precision(runner: Any, precision: str, options: Mapping[str, Any] | None = None) -> Any:
    """``runner`` at ``precision`` (a shallow copy; ``fp32`` returns ``runner`` itself). ``options``: the inference
    options it will run with (an ONNX export made on the fly is made for the ones that shape its graphs)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    from .export import as_onnx, onnx_info

    if precision.startswith("onnx-"):
        return as_onnx(runner, precision, options)
    info = onnx_info(runner)
    if info is not None and precision != "fp32":
        raise ConfigError(
            f"{runner.path}: an ONNX export ({info.precision}) runs at onnx-fp32 or onnx-int8, not {precision}"
        )
    if precision == "fp32":
        return runner
    if runner.device().type != "cpu":
        raise ConfigError(
            f"precision {precision} is a CPU inference setting; this model is on {runner.device()}"
        )
    out = copy.copy(runner)
    if precision == "int8":
        out.model = quantize_int8(runner.model)
        return out
    native, why = cpu_bf16()
    if not native:
        log.warning("bf16: %s", why)
    predict, timed = out.predict, out.timed
    out.predict = _autocast(predict)

    def timed_bf16(**options: Any) -> Callable[..., Any]:
        return _autocast(timed(**options))

    out.timed = timed_bf16
    return out


__all__ = ["PRECISIONS", "cpu_bf16", "quantize_int8", "with_precision"]
