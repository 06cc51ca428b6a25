"""Skip-gradient transfer (SGM; ``skip_gamma``): the surrogates' forward pass is unchanged, the
gradient through their residual branches is scaled only while the attack runs, and an
architecture without residual blocks is left alone."""

from __future__ import annotations

import pytest
import torch

from dicom_gateway.protect.perturbation import adapt, attack
from dicom_gateway.protect.skip_gradient import residual_branches, skip_gradients
from dicom_gateway.protect.surrogate import Surrogate, SurrogateInfo, build_model


def _surrogate(arch: str, size: int) -> Surrogate:
    torch.manual_seed(0)
    info = SurrogateInfo(arch, "classification", (size, size), 1, ("a", "b"), (0.5,), (0.25,))
    model = build_model(info).eval()
    with torch.no_grad():  # the ViT's head starts at zero: no gradient to compare
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return Surrogate(model, info, arch)


def _grad(s: Surrogate, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = s.model(adapt(x, s))
    grad, = torch.autograd.grad(out[:, 0].sum(), x)
    return out.detach(), grad


@pytest.mark.parametrize(("arch", "branches"), [("resnet10", 4), ("convnext-nano", 5),
                                                ("vit-tiny", 8)])
def test_residual_branches_scale_the_gradient_not_the_prediction(arch: str,
                                                                 branches: int) -> None:
    s = _surrogate(arch, 224)
    x = torch.rand(2, 1, 224, 224)
    out, grad = _grad(s, x)
    with skip_gradients([s], 0.5) as found:
        scaled_out, scaled = _grad(s, x)
    assert found == branches == len(residual_branches(s.model))
    assert torch.equal(out, scaled_out) and not torch.allclose(grad, scaled)
    after_out, after = _grad(s, x)  # the hooks are gone
    assert torch.equal(after_out, out) and torch.equal(after, grad)


def test_no_residual_blocks_and_gamma_one_change_nothing() -> None:
    small = _surrogate("cnn-small", 28)
    x = torch.rand(3, 1, 28, 28)
    with skip_gradients([small], 0.2) as found:
        assert found == 0
    resnet = _surrogate("resnet10", 64)
    with skip_gradients([resnet], 1.0) as found:
        assert found == 0
    a = attack(x, [small], epsilon=4 / 255, steps=3, skip_gamma=0.2)
    b = attack(x, [small], epsilon=4 / 255, steps=3)
    assert torch.equal(a, b)


def test_the_attack_with_sgm_stays_in_budget_and_differs() -> None:
    s = _surrogate("resnet10", 64)
    x = torch.rand(2, 1, 64, 64)
    plain = attack(x, [s], epsilon=4 / 255, steps=3)
    sgm = attack(x, [s], epsilon=4 / 255, steps=3, skip_gamma=0.5)
    assert (sgm - x).abs().max() <= 4 / 255 + 1e-6 and not torch.equal(plain, sgm)
