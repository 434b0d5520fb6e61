"""A persistent gradient buffer for large input-embedding tables (``train.persistent_embedding_grad``).

The backward of ``nn.Embedding`` allocates a dense ``num_embeddings × dim`` gradient every step, zero-fills it and
adds the batch's rows into it; autograd then stores (or adds) it as ``weight.grad``, and ``zero_grad`` throws it
away. For a 30,522 × 384 WordPiece table that is 47 MB a step of allocation (on Linux, a fresh ``mmap`` and its page
faults: glibc maps every block above 32 MB anew), zero-filling and copying, for the few hundred rows a batch touches.

Here the table keeps one gradient buffer across steps. The backward adds the batch's rows into it in place
(``index_add_``, the rows in the order the dense backward adds them, padding rows excluded as there), and it stays
attached as ``weight.grad``; before the next forward after ``zero_grad(set_to_none=True)`` only the rows written
since the last attach are zeroed. The optimizer, gradient clipping and mixed precision see the same dense gradient
as before — AdamW still updates every row — so the training is the same computation: bit-identical weights when
the table is read once per micro-batch (the usual case), the same sums up to float rounding order otherwise
(several lookups of the table in one step, gradient accumulation).

It is installed by the training loop on the student's eligible tables only: an ``nn.Embedding`` with at least
:data:`MIN_ROWS` rows, trainable, not shared with another module (a tied output projection makes the gradient
dense anyway), without ``max_norm`` / ``scale_grad_by_freq`` / ``sparse``; and only in a single-process run
without ``torch.compile`` (DDP's reducer needs the gradient to arrive through autograd's hooks; dynamo cannot
trace the in-place backward). :func:`uninstall` restores the tables at the end of training, so evaluation,
saving and export see plain modules.

What it relies on: between two forwards, nothing writes the gradient's *other* rows in place. bertdistill's
optimizers (AdamW, Adadelta, SGD: weight decay and ``maximize`` work on copies), gradient clipping and
mixed-precision unscaling (which scale every row, and a zero row stays zero) do not; a custom step that did (noise
added to every gradient element, say) would leak into the next step — turn the option off for it.
"""

from __future__ import annotations

import types
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_ROWS = 4096
"""Tables with fewer rows (position and token-type embeddings) are left alone: a batch touches most of them."""

_STATE = "_bertdistill_grad_buffer"


class _Buffer:
    """The table's gradient buffer and the rows written into it since it was last attached."""

    def __init__(self, module: nn.Embedding) -> None:
        self.module = module
        self.grad: Tensor | None = None
        self.written: list[Tensor] = []

    def attach(self) -> None:
        """Make the buffer ``weight.grad`` if it is not (the first lookup, or ``zero_grad(set_to_none=True)`` /
        another assignment since): zero the rows written since it was last attached (the rest is zero already)."""
        weight = self.module.weight
        if self.grad is not None and weight.grad is self.grad:
            return
        if self.grad is None or self.grad.shape != weight.shape or self.grad.device != weight.device:
            self.grad = torch.zeros_like(weight, memory_format=torch.contiguous_format)
            self.written.clear()
        elif self.written:
            self.grad.index_fill_(0, torch.cat(self.written), 0.0)
            self.written.clear()
        weight.grad = self.grad

    def add(self, ids: Tensor, grad_out: Tensor) -> None:
        """Add one lookup's output gradient into the buffer: row ``ids[i]`` += ``grad_out[i]``."""
        self.attach()  # in case the gradient was reset or replaced between the forward and this backward
        buf = self.grad
        assert buf is not None
        flat = ids.reshape(-1)
        buf.index_add_(0, flat, grad_out.reshape(-1, grad_out.shape[-1]).to(buf.dtype))
        pad = self.module.padding_idx
        if pad is not None:
            # the padding row never receives a gradient (as in the dense backward); only padding ids write it
            buf[pad].zero_()
        self.written.append(flat)
        # zero_grad(set_to_none=False) zeroes the buffer without detaching it, so attach() may not come for a long
        # time: keep the list of written rows short
        if len(self.written) > 64:
            self.written = [torch.cat(self.written).unique()]


class _Lookup(torch.autograd.Function):
    """``F.embedding`` whose weight gradient goes into the table's persistent buffer instead of autograd's."""

    @staticmethod
    def forward(ctx: Any, ids: Tensor, weight: Tensor, buffer: _Buffer) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(ids)
        ctx.buffer = buffer
        return F.embedding(ids, weight, buffer.module.padding_idx)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[None, None, None]:  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        ctx.buffer.add(ids, grad_out)
        return None, None, None


def _forward(self: nn.Embedding, input: Tensor) -> Tensor:
    buffer: _Buffer = getattr(self, _STATE)
    if not (torch.is_grad_enabled() and self.weight.requires_grad):
        return F.embedding(input, self.weight, self.padding_idx)
    buffer.attach()
    return _Lookup.apply(input, self.weight, buffer)


def eligible(model: nn.Module) -> list[nn.Embedding]:
    """The embedding tables of ``model`` that get a persistent gradient buffer (see the module docstring)."""
    owners = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    found = []
    for m in model.modules():
        if (
            type(m) is nn.Embedding
            and m.num_embeddings >= MIN_ROWS
            and m.max_norm is None
            and not m.scale_grad_by_freq
            and not m.sparse
            and m.weight.requires_grad
            and owners[id(m.weight)] == 1
            and not hasattr(m, _STATE)
        ):
            found.append(m)
    return found


def install(model: nn.Module) -> list[nn.Embedding]:
    """Give every eligible table of ``model`` a persistent gradient buffer; returns the tables changed."""
    tables = eligible(model)
    for m in tables:
        setattr(m, _STATE, _Buffer(m))
        m.forward = types.MethodType(_forward, m)  # type: ignore[method-assign]
    return tables


def uninstall(model: nn.Module) -> None:
    """Restore the tables :func:`install` changed; a gradient still attached stays as ``weight.grad``."""
    for m in model.modules():
        if hasattr(m, _STATE):
            delattr(m, _STATE)
            del m.forward
