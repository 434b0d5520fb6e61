"""An HF encoder run one piece at a time: its embeddings, then one layer after another.

FastBERT's early exit needs this: rows leave the batch between layers, so the encoder cannot run as one call.
:class:`Layerwise` wraps the base model of a sequence classifier (``BertModel``, ``RobertaModel``,
``ElectraModel``, ``DistilBertModel``, ``DebertaV2Model``, ``AlbertModel``, ...) and calls its own modules in the
order its ``forward`` does — the embeddings (with ELECTRA's and ALBERT's projections, DeBERTa's input mask), the
attention mask each layer takes, and each layer (with DeBERTa's relative positions and its convolution after the
first layer; ALBERT's shared layer group at each depth). Refused: encoders without a list of layers, layers that
take more than the states and the mask (positions computed once by their encoder: MPNet, RoFormer), and ALBERTs
with several layers per depth. A caller that must be exact checks the result against the model's own forward
(FastBERT does, when it wraps a teacher).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn
from transformers.masking_utils import create_bidirectional_mask

from .config import ConfigError
from .students import encoder_layers, shared_layer_groups

_PLAIN_LAYER = frozenset(
    {
        "self",
        "hidden_states",
        "attention_mask",
        "encoder_hidden_states",
        "encoder_attention_mask",
        "cache",
        "past_key_value",
        "past_key_values",
        "cache_position",
        "use_cache",
        "head_mask",
        "output_attentions",
        "kwargs",
    }
)
"""What a BERT-style layer takes (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, ALBERT's group in transformers 5):
the states and the mask; the rest is for decoders or for outputs."""


class Layerwise:
    """``base`` (an encoder without its task head) as pieces: :meth:`embed`, :meth:`context` (what every layer
    takes besides the states: the attention mask in the form the layers expect; DeBERTa adds its relative
    positions), :meth:`layer` and :meth:`keep` (the rows that stay). ``embed_inputs`` names the tensors
    :meth:`embed` reads, in order."""

    def __init__(self, base: nn.Module, purpose: str = "the encoder runs one layer at a time") -> None:
        self.base: Any = base
        encoder: Any = getattr(base, "encoder", None)
        self.encoder = encoder
        self.groups = shared_layer_groups(base)
        self.depth = int(getattr(base, "config").num_hidden_layers)  # noqa: B009
        self.layers: Any
        if self.groups is not None:  # ALBERT: depth i runs layer group int(i / (depth / groups)), shared
            inner = int(getattr(base, "config").inner_group_num)  # noqa: B009
            if inner != 1:
                raise ConfigError(
                    f"{purpose}: this ALBERT runs {inner} layers per depth (inner_group_num), so a depth is not one "
                    "layer; ALBERT with inner_group_num 1 (every released ALBERT) is supported"
                )
            self.layers = encoder.albert_layer_groups
        else:
            try:
                _, self.layers = encoder_layers(base)
            except ValueError as e:
                raise ConfigError(f"{purpose}: {e}") from e
        self.relative = self.encoder is not None and hasattr(self.encoder, "get_rel_pos")  # DeBERTa-v2
        # a layer that takes more than the states and the mask is one we would run wrong
        if not self.relative:
            extra = set(inspect.signature(self.layers[0].forward).parameters) - _PLAIN_LAYER
            if extra:
                raise ConfigError(
                    f"{purpose}: {type(self.layers[0]).__name__} also takes {sorted(extra)} (positions its encoder "
                    "computes once for all layers), which running it layer by layer would leave out"
                )
        embeddings: Any = getattr(base, "embeddings", None)
        if not isinstance(embeddings, nn.Module):
            raise ConfigError(f"{purpose}: {type(base).__name__} has no .embeddings module to start from")
        params = inspect.signature(embeddings.forward).parameters
        self._masked_embeddings = "mask" in params  # DeBERTa multiplies its embeddings by the input mask
        names = ["input_ids"] + (["token_type_ids"] if "token_type_ids" in params else [])
        self.embed_inputs = tuple(names + (["attention_mask"] if self._masked_embeddings else []))

    def __len__(self) -> int:
        return self.depth

    def embed(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        kwargs: dict[str, Any] = {"input_ids": input_ids}
        if "token_type_ids" in self.embed_inputs:
            kwargs["token_type_ids"] = token_type_ids
        if self._masked_embeddings:
            kwargs["mask"] = attention_mask
        hidden: Tensor = self.base.embeddings(**kwargs)
        project = getattr(self.base, "embeddings_project", None)  # ELECTRA: embedding size → hidden size
        if project is None and self.groups is not None:
            project = self.encoder.embedding_hidden_mapping_in  # ALBERT's, the first step of its encoder
        return project(hidden) if project is not None else hidden

    def context(self, hidden: Tensor, attention_mask: Tensor) -> dict[str, Any]:
        if self.relative:
            enc = self.encoder
            return {
                "mask": enc.get_attention_mask(attention_mask),
                "input_mask": attention_mask,
                "relative_pos": enc.get_rel_pos(hidden),
                "rel_embeddings": enc.get_rel_embedding(),
            }
        mask = create_bidirectional_mask(
            config=self.base.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        return {"mask": mask}

    def layer(self, i: int, hidden: Tensor, context: dict[str, Any]) -> Tensor:
        if not self.relative:
            block = self.layers[i if self.groups is None else int(i / (self.depth / self.groups))]
            out = block(hidden, context["mask"])
            return out[0] if isinstance(out, tuple) else out  # type: ignore[no-any-return]
        out, _ = self.layers[i](
            hidden,
            context["mask"],
            query_states=None,
            relative_pos=context["relative_pos"],
            rel_embeddings=context["rel_embeddings"],
        )
        conv = getattr(self.encoder, "conv", None)  # DeBERTa-v1 has none
        if i == 0 and conv is not None:  # DeBERTa-v2's convolution on the embeddings after the first layer
            out = conv(hidden, out, context["input_mask"])
        return out  # type: ignore[no-any-return]

    @staticmethod
    def keep(context: dict[str, Any], rows: Tensor) -> dict[str, Any]:
        """``context`` for the rows ``rows`` (a boolean mask over the batch) of a batch that loses the others;
        DeBERTa's relative positions and embeddings do not depend on the row."""
        return {
            k: v[rows] if k in ("mask", "input_mask") and isinstance(v, Tensor) and v.shape[0] > 1 else v
            for k, v in context.items()
        }


__all__ = ["Layerwise"]
