"""Loss functions: pure tensor math, no models. Each states its formula and where it comes from."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_target_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton et al. 2015 soft-target loss: ``t² · KL(softmax(z_T/t) ‖ softmax(z_S/t))``.

    Mean over examples (``batchmean``: summed over classes, averaged over rows — never averaged over
    classes), multiplied by t² so that its gradient keeps the same scale as the hard loss when t changes.
    Works on ``[N, C]`` or any ``[..., C]`` (leading dims are flattened into rows).
    """
    t = float(temperature)
    s = student_logits.reshape(-1, student_logits.shape[-1]).float()
    te = teacher_logits.reshape(-1, teacher_logits.shape[-1]).float()
    log_p_s = F.log_softmax(s / t, dim=-1)
    log_p_t = F.log_softmax(te / t, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * (t * t)


def masked_soft_target_kl(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Token-level soft-target loss (DistilBERT's ``L_ce``): :func:`soft_target_kl` over the rows
    ``[B, T, V][mask]`` only — ``t² · Σ_rows KL(p_T ‖ p_S) / #rows`` (official: ``KLDivLoss(batchmean)`` on
    the selected token rows). ``mask`` ``[B, T]`` is the attention mask (all real tokens) or the MLM
    prediction mask; padded rows neither contribute nor dilute."""
    m = mask.bool()
    if not m.any():
        return student_logits.sum() * 0.0
    return soft_target_kl(student_logits[m], teacher_logits[m], temperature)


def mlm_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Masked-LM cross-entropy: mean over the positions whose label is not −100 (the masked ones);
    0 when a batch has none."""
    flat = labels.reshape(-1)
    if not (flat != -100).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=-100)


def hard_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy with gold labels (mean over examples)."""
    return F.cross_entropy(logits.float(), labels.long())


def regression_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of a single regression output ``[N, 1]`` or ``[N]`` against ``[N]`` targets."""
    return F.mse_loss(pred.float().reshape(-1), target.float().reshape(-1))


def masked_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """MSE over the real (non-padded) positions of ``[B, T, H]`` states.

    ``mask`` is ``[B, T]`` (1 = real token). Mean over real tokens × hidden units, so padding neither
    contributes nor dilutes the average.
    """
    m = mask.to(student.dtype).unsqueeze(-1)
    sq = (student.float() - teacher.float()).pow(2) * m
    denom = m.sum() * student.shape[-1]
    return sq.sum() / denom.clamp_min(1.0)


def masked_cosine(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Cosine-embedding loss with target 1, ``mean over real tokens of (1 − cos(h_S, h_T))`` (DistilBERT)."""
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    m = mask.to(cos.dtype)
    return ((1.0 - cos) * m).sum() / m.sum().clamp_min(1.0)


def hinton_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    alpha: float,
    temperature: float,
    regression: bool,
) -> dict[str, Tensor]:
    """Hinton KD's two weighted terms: ``kd = α·t²·KL(p_T ‖ p_S)`` and ``ce = (1 − α)·CE(z_S, y)``; for a
    regression output ``kd = α·MSE(z_S, z_T)`` and ``mse = (1 − α)·MSE(z_S, y)`` (no temperature). The hard
    term is left out when α = 1 or the batch has no labels."""
    if regression:
        terms = {"kd": alpha * regression_mse(student_logits, teacher_logits)}
        if alpha < 1 and labels is not None:
            terms["mse"] = (1 - alpha) * regression_mse(student_logits, labels)
        return terms
    terms = {"kd": alpha * soft_target_kl(student_logits, teacher_logits, temperature)}
    if alpha < 1 and labels is not None:
        terms["ce"] = (1 - alpha) * hard_ce(student_logits, labels)
    return terms
