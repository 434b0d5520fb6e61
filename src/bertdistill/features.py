"""What a method needs from a model's forward pass, and reading it from HF ``ModelOutput`` fields.

Indexing convention, stated once: ``hidden_states`` has L+1 entries, index 0 = the embedding output and
index m = the output of layer m (1-based); ``attentions`` has L entries, index i = layer i (0-based).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass(frozen=True)
class Needs:
    """Teacher outputs a loss reads. ``hidden_layers`` / ``attention_layers`` select which entries are kept
    (hidden: 0..L with 0 = embeddings; attention: 0..L-1); ``None`` keeps all when the flag is on."""

    logits: bool = True
    hidden_states: bool = False
    attentions: bool = False
    hidden_layers: tuple[int, ...] | None = None
    attention_layers: tuple[int, ...] | None = None
    cls_only: bool = False
    """Keep only the first position of each hidden state (``[B, 1, H]``): [CLS]-level losses (PKD) need no
    more, and a teacher cache of full states is ~T times larger."""

    def key(self) -> str:
        return repr(self)


@dataclass
class Features:
    """Selected outputs of one forward pass, keyed explicitly by layer index."""

    logits: Tensor | None = None
    hidden_states: dict[int, Tensor] = field(default_factory=dict)  # index in HF hidden_states -> [B, T, H]
    attentions: dict[int, Tensor] = field(default_factory=dict)  # layer (0-based) -> [B, heads, T, T]


class MissingAttentionsError(RuntimeError):
    pass


def select_features(output: object, needs: Needs) -> Features:
    """Pick the needed fields out of a HF ``ModelOutput`` by name."""
    feats = Features(logits=getattr(output, "logits", None) if needs.logits else None)
    if needs.hidden_states:
        hs = getattr(output, "hidden_states", None)
        if hs is None:
            raise RuntimeError("the model returned no hidden_states; call it with output_hidden_states=True")
        keep = range(len(hs)) if needs.hidden_layers is None else needs.hidden_layers
        for i in keep:
            if not -len(hs) <= i < len(hs):
                raise IndexError(f"hidden_states index {i} out of range: the model has {len(hs) - 1} layers")
            feats.hidden_states[i] = hs[i][:, :1] if needs.cls_only else hs[i]
    if needs.attentions:
        att = getattr(output, "attentions", None)
        if not att or any(a is None for a in att):
            raise MissingAttentionsError(
                "the model returned no attention maps: transformers' sdpa/flash attention cannot return them. "
                "Load it with attn_implementation='eager' (bertdistill does this when a method needs attentions)."
            )
        keep = range(len(att)) if needs.attention_layers is None else needs.attention_layers
        for i in keep:
            feats.attentions[i] = att[i]
    return feats


def forward_features(model: nn.Module, inputs: Mapping[str, Tensor], needs: Needs) -> tuple[object, Features]:
    """Run ``model`` asking for exactly what ``needs`` says; return the raw output and the selection."""
    out = model(**inputs, output_hidden_states=needs.hidden_states, output_attentions=needs.attentions)
    return out, select_features(out, needs)
