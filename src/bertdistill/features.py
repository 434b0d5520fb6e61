"""Running a model for what a method needs (:class:`~bertdistill.protocol.Needs`), read from HF ``ModelOutput``
fields by name.

Indexing convention, stated once: ``hidden_states`` has L+1 entries, index 0 = the embedding output and
index m = the output of layer m (1-based); ``attentions`` has L entries, index i = layer i (0-based).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from .protocol import Features, Needs


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


__all__ = ["Features", "MissingAttentionsError", "Needs", "forward_features", "select_features"]
