import math

import pytest
import torch

from bertdistill.losses import hard_ce, masked_cosine, masked_mse, regression_mse, soft_target_kl


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
