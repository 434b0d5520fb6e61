"""Prediction with a saved student: labels and probabilities (or a score, for regression)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from .data.loading import Collator, Examples, tokenize


class Predictor:
    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        max_length: int = 128,
        device: str | None = None,
        speed: float | None = None,
    ) -> None:
        from .evaluation import load_model

        lm = load_model(model_dir)
        self.model = lm.model.to(device or "cpu").eval()
        self.tokenizer = lm.tokenizer
        self.max_length = max_length
        self.speed = speed
        if speed is not None and not hasattr(self.model, "branches"):
            raise ValueError(f"{model_dir} is not an early-exit (fastbert) model; drop --speed")
        cfg: Any = self.model.config
        self.regression = getattr(cfg, "problem_type", None) == "regression" or cfg.num_labels == 1
        self.id2label = {int(k): v for k, v in (cfg.id2label or {}).items()}
        fields = (lm.recipe.get("data") or {}).get("task")
        from .data.tasks import GLUE_TASKS

        self.is_pair = bool(fields in GLUE_TASKS and GLUE_TASKS[fields].is_pair)

    @torch.no_grad()
    def predict(self, texts: Sequence[tuple[str, ...]], batch_size: int = 32) -> Iterator[dict[str, Any]]:
        """One dict per example: ``label`` and ``probs`` (classification) or ``score`` (regression)."""
        if not texts:
            return
        width = len(texts[0])
        bad = [i for i, t in enumerate(texts) if len(t) != width]
        if bad:
            raise ValueError(f"examples {bad[:5]} have a different number of fields than the first ({width})")
        data = tokenize(Examples(list(texts), None), self.tokenizer, self.max_length)
        coll = Collator(self.tokenizer.pad_token_id or 0)
        device = next(self.model.parameters()).device
        for s in range(0, len(data), batch_size):
            batch = coll([data[i] for i in range(s, min(s + batch_size, len(data)))])
            inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
            if self.speed is None:
                yield from self._rows(self.model(**inputs).logits.float().cpu())
                continue
            from .early_exit import early_exit

            res = early_exit(self.model, inputs, self.speed)
            for row, layer in zip(self._rows(res.logits.float().cpu()), res.exit_layer.tolist(), strict=True):
                yield {**row, "exit_layer": layer}

    def _rows(self, logits: torch.Tensor) -> Iterable[dict[str, Any]]:
        if self.regression:
            for v in logits.reshape(-1).tolist():
                yield {"score": v}
            return
        probs = logits.softmax(-1)
        for p in probs:
            k = int(p.argmax())
            yield {"label": self.id2label.get(k, str(k)), "probs": [round(x, 6) for x in p.tolist()]}
