import math

import pytest
import torch

from bertdistill.losses import (
    hard_ce,
    hinton_terms,
    masked_cosine,
    masked_mse,
    regression_mse,
    soft_target_kl,
)


def test_soft_target_kl_golden_value():
    # two examples, two classes, t = 2, computed by hand
    zs = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    zt = torch.tensor([[3.0, 1.0], [2.0, 0.0]])
    t = 2.0

    def softmax(v):
        e = [math.exp(x / t) for x in v]
        return [x / sum(e) for x in e]

    total = 0.0
    for s, te in zip(zs.tolist(), zt.tolist(), strict=True):
        ps, pt = softmax(s), softmax(te)
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
    expected = total / 2 * t * t  # batchmean, times t^2
    assert soft_target_kl(zs, zt, t).item() == pytest.approx(expected, rel=1e-5)


def test_soft_target_kl_zero_when_equal_and_positive_otherwise():
    z = torch.randn(5, 3)
    assert soft_target_kl(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_target_kl(z, torch.randn(5, 3), 4.0).item() > 0


def test_soft_target_kl_t_squared_keeps_gradient_scale():
    """d KL/d z_S = (p_S − p_T)/t ≈ (z_S − z_T)/(C·t²) for large t; the ×t² makes the gradient (nearly)
    independent of t. Without it, going from t = 4 to t = 8 would shrink it ~4×."""
    zt = torch.tensor([[2.0, -1.0, 0.5]])
    grads = {}
    for t in (4.0, 8.0):
        zs = torch.zeros(1, 3, requires_grad=True)
        soft_target_kl(zs, zt, t).backward()
        grads[t] = zs.grad.norm().item()
    assert 0.9 < grads[4.0] / grads[8.0] < 1.1


def test_soft_target_kl_is_batchmean_not_class_mean():
    zs, zt = torch.randn(3, 10), torch.randn(3, 10)
    per_row = torch.stack([soft_target_kl(zs[i : i + 1], zt[i : i + 1], 1.0) for i in range(3)])
    assert soft_target_kl(zs, zt, 1.0).item() == pytest.approx(per_row.mean().item(), rel=1e-5)


def test_hard_ce_and_regression_mse():
    logits = torch.tensor([[2.0, 0.0]])
    assert hard_ce(logits, torch.tensor([0])).item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-5)
    assert regression_mse(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 2.0])).item() == pytest.approx(1.0)


def test_masked_losses_ignore_padding():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    base_mse, base_cos = masked_mse(s, t, mask), masked_cosine(s, t, mask)
    s2 = s.clone()
    s2[0, 3:] = 100.0  # change only padded positions
    assert masked_mse(s2, t, mask).item() == pytest.approx(base_mse.item())
    assert masked_cosine(s2, t, mask).item() == pytest.approx(base_cos.item())
    # normalised by real tokens: equal inputs on real tokens give exactly zero
    t2 = s.clone()
    t2[0, 3:] = -5.0
    assert masked_mse(s, t2, mask).item() == pytest.approx(0.0)
    # golden value: mean over real tokens x units
    expected = ((s - t) ** 2 * mask[..., None]).sum() / (mask.sum() * 4)
    assert base_mse.item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------------------------- Hinton KD

ZS = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]  # student logits, two examples, three classes
ZT = [[3.0, 0.0, 1.0], [-1.0, 2.0, 0.0]]  # teacher logits
GOLD = [2, 0]  # gold labels that disagree with the teacher


def _softmax(v, t=1.0):
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def _hand_soft(t):
    """t² · mean over examples of KL(softmax(z_T/t) ‖ softmax(z_S/t)), summed over classes."""
    kl = [
        sum(a * math.log(a / b) for a, b in zip(_softmax(te, t), _softmax(s, t), strict=True))
        for s, te in zip(ZS, ZT, strict=True)
    ]
    return t * t * sum(kl) / len(kl)


def _hand_ce():
    return -sum(math.log(_softmax(s)[y]) for s, y in zip(ZS, GOLD, strict=True)) / len(GOLD)


def test_hinton_soft_term_golden_value():
    """t = 2, by hand (4 decimals):
    example 1: p_T = softmax([1.5, 0, 0.5]) = [0.6285, 0.1402, 0.2312], p_S = softmax([0.5, 0, -0.5]) =
    [0.5065, 0.3072, 0.1863]; KL(p_T ‖ p_S) = 0.1357 − 0.1100 + 0.0499 = 0.0757 (0.07566 unrounded);
    example 2: p_T = softmax([-0.5, 1, 0]) = [0.1402, 0.6285, 0.2312], p_S = softmax([0.25, 0.25, 0]) =
    [0.3599, 0.3599, 0.2803]; KL = −0.1322 + 0.3505 − 0.0445 = 0.1739 (0.17387);
    soft term = t² · mean = 4 · (0.07566 + 0.17387) / 2 = 0.49905."""
    terms = hinton_terms(torch.tensor(ZS), torch.tensor(ZT), None, 1.0, 2.0, regression=False)
    assert set(terms) == {"kd"}  # α = 1 (or no labels): no hard term
    assert terms["kd"].item() == pytest.approx(0.49905, abs=1e-5)
    assert terms["kd"].item() == pytest.approx(_hand_soft(2.0), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_hinton_terms_weight_soft_by_alpha_and_hard_by_one_minus_alpha(alpha):
    """Each named term separately, so that swapping α and 1 − α (or the two terms' names) fails even at
    α = 0.5, where the sums agree."""
    labels = torch.tensor(GOLD)
    terms = hinton_terms(torch.tensor(ZS), torch.tensor(ZT), labels, alpha, 2.0, regression=False)
    assert set(terms) == {"kd", "ce"}
    assert terms["kd"].item() == pytest.approx(alpha * _hand_soft(2.0), rel=1e-5)
    assert terms["ce"].item() == pytest.approx((1 - alpha) * _hand_ce(), rel=1e-5)
    assert _hand_ce() > 2 * _hand_soft(2.0)  # the two raw terms are far apart: a swap cannot pass


def test_hinton_regression_terms_use_the_teacher_prediction_without_temperature():
    """Regression: ``kd = α·MSE(z_S, z_T)`` against the *teacher's* prediction (not the gold score), with no
    temperature anywhere; ``mse = (1 − α)·MSE(z_S, y)``."""
    zs, zt, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [5.0]]), torch.tensor([4.0, 0.0])
    to_teacher = ((1 - 2) ** 2 + (3 - 5) ** 2) / 2  # 2.5
    to_gold = ((1 - 4) ** 2 + (3 - 0) ** 2) / 2  # 9.0
    for temperature in (1.0, 4.0):
        terms = hinton_terms(zs, zt, y, 0.3, temperature, regression=True)
        assert set(terms) == {"kd", "mse"}
        assert terms["kd"].item() == pytest.approx(0.3 * to_teacher, rel=1e-6)
        assert terms["mse"].item() == pytest.approx(0.7 * to_gold, rel=1e-6)
