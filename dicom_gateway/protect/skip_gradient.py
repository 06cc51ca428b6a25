"""Skip-gradient transfer (SGM: Wu et al., "Skip Connections Matter: On the Transferability of
Adversarial Examples Generated with ResNets", ICLR 2020): while the attack runs, the gradient
that flows back through each residual branch of a surrogate is multiplied by ``gamma`` < 1,
the one through the skip connection is left whole. The forward pass is unchanged (predictions,
losses and labels are the surrogate's own); only the direction of the attack changes, towards
the low-level features that the skip connections carry and that other architectures share.

Applies to the residual blocks of the surrogate architectures this project trains and of the
torchvision families they are built from: ResNet ``BasicBlock`` / ``Bottleneck`` (the branch
ends in ``bn2`` / ``bn3``), ConvNeXt ``CNBlock`` (its ``stochastic_depth``), ViT
``EncoderBlock`` (the attention's ``dropout`` and the ``mlp``). A surrogate without such
blocks (``cnn-small``, a TorchScript file) is attacked as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["residual_branches", "skip_gradients"]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward (a copy, so that the block may add to it in place); the gradient times
    ``gamma`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gamma: float) -> torch.Tensor:
        ctx.gamma = gamma
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.gamma, None


def residual_branches(model: nn.Module) -> list[nn.Module]:
    """The modules whose output is a residual branch's contribution, before the skip is added."""
    from torchvision.models.convnext import CNBlock
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from torchvision.models.vision_transformer import EncoderBlock

    found: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, BasicBlock):
            found.append(m.bn2)
        elif isinstance(m, Bottleneck):
            found.append(m.bn3)
        elif isinstance(m, CNBlock):
            found.append(m.stochastic_depth)
        elif isinstance(m, EncoderBlock):
            found.extend((m.dropout, m.mlp))
    return found


@contextlib.contextmanager
def skip_gradients(surrogates: Sequence[Any], gamma: float) -> Iterator[int]:
    """Within the block, every residual branch of ``surrogates`` (``Surrogate`` objects) passes
    ``gamma`` of its gradient back; yields how many branches were found. ``gamma`` 1: nothing
    changes (no hook is set)."""
    handles: list[Any] = []
    if gamma < 1:
        def scale(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            return _ScaleGrad.apply(output, gamma)

        for s in surrogates:
            if isinstance(s.model, nn.Module) and not isinstance(s.model, torch.jit.ScriptModule):
                handles.extend(b.register_forward_hook(scale) for b in residual_branches(s.model))
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()
