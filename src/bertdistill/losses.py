"""Loss functions: pure tensor math, no models. Each states its formula and where it comes from."""

from __future__ import annotations

import math

import torch
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


# ----------------------------------------------------------------------------------------------- TinyBERT

MASKED_SCORE = -1e2
"""TinyBERT official: attention scores ``<= -100`` are masked positions (the additive mask) and become 0."""


def zero_masked_scores(scores: Tensor, threshold: float = MASKED_SCORE) -> Tensor:
    """``torch.where(s <= threshold, 0, s)`` — the official TinyBERT treatment of pre-softmax scores that
    carry the additive mask (−10000 there, the dtype's minimum in transformers 5: both fall below −100)."""
    return torch.where(scores <= threshold, torch.zeros_like(scores), scores)


def _pair_mask(mask: Tensor, like: Tensor) -> Tensor:
    """``[B, T]`` token mask → ``[B, 1, T, T]`` (query real × key real) in ``like``'s dtype."""
    m = mask.to(like.dtype)
    return (m[:, None, :, None] * m[:, None, None, :]).expand(-1, like.shape[1], -1, -1)


def attention_score_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """TinyBERT attention loss (Jiao et al. 2020, eq. 7) on **pre-softmax** scores ``[B, heads, T, T]``:
    ``mean over heads × real (query, key) pairs of (A_S − A_T)²`` after :func:`zero_masked_scores` on both.

    The official code takes a plain ``MSELoss`` over the padded batch; here pairs that involve a padded
    token are left out (so the value does not depend on how the batch was padded, and cached teacher maps,
    stored unpadded, give the same loss as live ones)."""
    s = zero_masked_scores(student.float())
    t = zero_masked_scores(teacher.float())
    pm = _pair_mask(mask, s)
    return ((s - t).pow(2) * pm).sum() / pm.sum().clamp_min(1.0)


def _masked_log_probs(scores: Tensor, mask: Tensor) -> Tensor:
    keep = mask.bool()[:, None, None, :]
    return torch.log_softmax(scores.float().masked_fill(~keep, float("-inf")), dim=-1)


def attention_prob_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """MSE of the post-softmax maps ``softmax(scores)`` (padded keys excluded), mean over heads × real
    (query, key) pairs. An option; TinyBERT itself uses :func:`attention_score_mse`."""
    p_s = _masked_log_probs(student, mask).exp()
    p_t = _masked_log_probs(teacher, mask).exp()
    pm = _pair_mask(mask, p_s)
    return ((p_s - p_t).pow(2) * pm).sum() / pm.sum().clamp_min(1.0)


def attention_kl(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """``KL(softmax(A_T) ‖ softmax(A_S))`` per head and real query row (summed over keys), averaged over
    heads × real query rows (MiniLM-style). Inputs are pre-softmax scores; padded keys are excluded."""
    log_s = _masked_log_probs(student, mask)
    log_t = _masked_log_probs(teacher, mask)
    keep = mask.bool()[:, None, None, :]
    kl = torch.where(keep, log_t.exp() * (log_t - log_s), torch.zeros_like(log_t)).sum(-1)  # [B, H, T]
    rows = mask.to(kl.dtype)[:, None, :].expand_as(kl)
    return (kl * rows).sum() / rows.sum().clamp_min(1.0)


def average_heads(att: Tensor, n_heads: int) -> Tensor:
    """Average the teacher's ``H`` heads in ``n_heads`` groups of ``H / n_heads`` consecutive heads:
    ``[B, H, T, T] → [B, n_heads, T, T]`` (group g = heads g·r … g·r + r − 1). For students with fewer heads
    than the teacher (not in the paper, which matches head counts). Masked entries stay ≤ −100 (they are
    averages of values that all are)."""
    h = att.shape[1]
    if h == n_heads:
        return att
    if h % n_heads:
        raise ValueError(f"cannot average {h} teacher heads into {n_heads} groups: {h} % {n_heads} != 0")
    b, _, q, k = att.shape
    return att.reshape(b, n_heads, h // n_heads, q, k).mean(dim=2)


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """TinyBERT prediction loss (eq. 10): ``mean over examples *and classes* of −softmax(z_T/t)·log_softmax(z_S/t)``.

    As the official ``soft_cross_entropy`` (``(-targets_prob * student_likelihood).mean()``): the mean runs over
    classes too (a constant 1/C factor against the usual per-example sum) and there is **no t²** factor."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    p_t = F.softmax(teacher_logits.float() / t, dim=-1)
    return (-p_t * log_p_s).mean()


# ----------------------------------------------------------------------------------------------- MobileBERT

LAYER_NORM_EPS = 1e-12
"""Epsilon of the parameter-free layer normalisation of the feature-map loss (TF ``layer_norm``'s default,
as in the official MobileBERT code)."""


def layer_norm_mse(student: Tensor, teacher: Tensor, mask: Tensor, eps: float = LAYER_NORM_EPS) -> Tensor:
    """MobileBERT feature-map transfer (Sun et al. 2020, eq. 1 with the official code's normalisation):
    ``mean over real tokens × units of (LN(h_S) − LN(h_T))²`` where ``LN`` is layer normalisation over the
    units *without* parameters (zero mean, unit variance per token). ``[B, T, H]`` states of equal width;
    padded positions neither contribute nor dilute (the official code averages over the padded batch)."""
    width = (student.shape[-1],)
    s = F.layer_norm(student.float(), width, eps=eps)
    t = F.layer_norm(teacher.float(), width, eps=eps)
    return masked_mse(s, t, mask)


def mean_variance_transfer(student: Tensor, teacher: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The official MobileBERT code's statistics terms (``beta`` / ``gamma`` distill losses) for one layer:

    * mean term ``mean over real tokens of (μ_T − μ_S)²``,
    * variance term ``mean over real tokens of |σ²_T − σ²_S|``,

    with μ, σ² the mean and (population) variance of a token's state over its units. The teacher statistics
    are those of the *same* layer's teacher state — the official code reads them from the stack of all
    teacher layers (``teacher_hiddens`` instead of ``teacher_hidden``), a bug not reproduced here."""
    s, t = student.float(), teacher.float()
    mu_s, mu_t = s.mean(-1), t.mean(-1)
    var_s = (s - mu_s.unsqueeze(-1)).pow(2).mean(-1)
    var_t = (t - mu_t.unsqueeze(-1)).pow(2).mean(-1)
    m = mask.to(s.dtype)
    n = m.sum().clamp_min(1.0)
    return ((mu_t - mu_s).pow(2) * m).sum() / n, ((var_t - var_s).abs() * m).sum() / n


def attention_cross_entropy(student_scores: Tensor, teacher_scores: Tensor, mask: Tensor) -> Tensor:
    """MobileBERT attention transfer: per head and real query, ``−Σ_k p_T(k) · log p_S(k)`` over the real
    keys (= KL(p_T ‖ p_S) + H(p_T), the official ``kl_divergence``), averaged over batch × heads × real queries.

    Inputs are **pre-softmax** scores ``[B, heads, T, T]``; ``p = softmax`` over the keys with padded keys
    excluded (the official code gives them the score −6 instead, a small leftover mass). When the teacher has
    ``r`` times the student's heads, its *distributions* are averaged in groups of ``r`` consecutive heads
    (:func:`average_heads` on probabilities) so that each student head learns a proper distribution."""
    keep = mask.bool()[:, None, None, :]
    log_s = _masked_log_probs(student_scores, mask)
    p_t = average_heads(_masked_log_probs(teacher_scores, mask).exp(), student_scores.shape[1])
    ce = -(p_t * log_s.masked_fill(~keep, 0.0)).sum(-1)  # [B, H, T]
    rows = mask.to(ce.dtype)[:, None, :].expand_as(ce)
    return (ce * rows).sum() / rows.sum().clamp_min(1.0)


def soft_label_mlm_ce(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, ground_truth_ratio: float = 0.5
) -> Tensor:
    """MobileBERT pre-training distillation (official ``distill_ground_truth_ratio``): cross-entropy of the
    student's masked-token distribution against the target ``(1 − r)·softmax(z_T) + r·one_hot(x)``, mean over
    the ``M`` predicted positions. ``student_logits`` / ``teacher_logits`` are ``[M, V]`` rows of those
    positions, ``labels`` ``[M]`` their original ids; r = 0.5 in the paper's command."""
    if labels.numel() == 0:
        return student_logits.sum() * 0.0
    log_p_s = F.log_softmax(student_logits.float(), dim=-1)
    p_t = F.softmax(teacher_logits.float(), dim=-1)
    soft = -(p_t * log_p_s).sum(-1)
    hard = -log_p_s.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return ((1.0 - ground_truth_ratio) * soft + ground_truth_ratio * hard).mean()


# ----------------------------------------------------------------------------------------------- C-MLM


def label_smoothed_ce(logits: Tensor, targets: Tensor, epsilon: float) -> Tensor:
    """Cross-entropy with label smoothing (Szegedy et al. 2016), mean over rows:
    ``(1 − ε)·(−log q_y) + ε·mean_v(−log q_v)`` — the target's share of the smoothed distribution is
    ``1 − ε + ε/V`` and every other class gets ``ε/V`` (torch's ``label_smoothing``). ``logits`` ``[N, V]``,
    ``targets`` ``[N]`` (select the real tokens first)."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets.long(), label_smoothing=float(epsilon))


def topk_sharpness(teacher_topk_logits: Tensor, temperature: float) -> dict[str, float]:
    """How much the targets of :func:`topk_soft_ce` say, over rows ``[N, k]`` of top-k logits: the mean
    ``top1_prob`` of ``softmax(z / t)``, its mean entropy as a share of the uniform's ``ln k`` (``entropy_ratio``:
    1 = the k tokens are told apart not at all), the mean gap between the top-1 and the k-th logit, and the mean
    top-1 probability at t = 1 (``top1_prob_t1``, the teacher's own confidence within its top k)."""
    z = teacher_topk_logits.float()
    k = z.shape[-1]
    if z.shape[0] == 0 or k < 2:
        return {"top1_prob": 1.0, "entropy_ratio": 0.0, "logit_gap": 0.0, "top1_prob_t1": 1.0}
    p = F.softmax(z / float(temperature), dim=-1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return {
        "top1_prob": float(p.max(-1).values.mean()),
        "entropy_ratio": float(entropy.mean() / math.log(k)),
        "logit_gap": float((z.max(-1).values - z.min(-1).values).mean()),
        "top1_prob_t1": float(F.softmax(z, dim=-1).max(-1).values.mean()),
    }


def topk_soft_ce(
    student_logits: Tensor, teacher_topk_logits: Tensor, teacher_topk_ids: Tensor, temperature: float
) -> Tensor:
    """C-MLM's knowledge-distillation term (Chen et al. 2020, official ``kd_loss``), mean over rows:
    ``−Σ_j p_j · log softmax(z_S)[id_j]`` with ``p = softmax(z_T^top-k / t)``.

    The teacher's distribution is renormalised over its top-k logits only (the other V − k classes get 0), with
    temperature t on the teacher alone; the student keeps its plain log-softmax over the whole vocabulary, and
    there is no t² factor. ``student_logits`` ``[N, V]``, ``teacher_topk_*`` ``[N, k]`` (rows aligned)."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    p = F.softmax(teacher_topk_logits.float() / float(temperature), dim=-1)
    log_q = F.log_softmax(student_logits.float(), dim=-1).gather(-1, teacher_topk_ids.long())
    return -(p * log_q).sum(-1).mean()
