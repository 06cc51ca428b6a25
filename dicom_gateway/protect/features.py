"""Feature-level attack losses: what the perturbation ascends at a surrogate's middle layer
instead of (or besides) its output.

Models of other families than the surrogates disagree more about decision boundaries than
about mid-level features, so losses on those features transfer further (and do not need the
task's labels to mean anything on the victim's data):

- ``feature``: the relative distortion of the middle layer's features,
  ``||f(x') - f(x)|| / ||f(x)||`` (a task-agnostic objective: Naseer et al., "Task-generalizable
  adversarial attack based on perceptual metric", 2018; Ganeshan et al., "FDA: Feature
  disruptive attack", ICCV 2019).
- ``fia``: feature importance-aware attack (Wang et al., "Feature importance-aware
  transferable adversarial attacks", ICCV 2021): the gradient of the label's logit with
  respect to the middle layer, aggregated over copies of the image with random pixels dropped,
  weighs the features; the attack pushes the important ones down.

Both compare the perturbed image with the clean one through the *same* random transformation
(:func:`paired_views`), so that input diversity keeps the feature maps aligned.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["FEATURE_LAYERS", "FEATURE_LOSSES", "FIA_COPIES", "FIA_KEEP", "captured",
           "feature_layer", "feature_loss", "paired_views"]

FEATURE_LOSSES = ("feature", "fia")
FIA_COPIES = 2  # dropped-pixel copies per step (the aggregate builds up over the steps)
FIA_KEEP = 0.9  # fraction of pixels each copy keeps (FIA's drop probability 0.1)

# The middle layer of each built-in architecture, by module name inside the loaded model
# (surrogate._Normalized -> body [-> _Grey3 body]): the end of the stage at 1/8 of the input
# for the CNNs, the second of four blocks for the ViT.
FEATURE_LAYERS = {
    "cnn-small": "body.1",
    "resnet18": "body.layer2",
    "resnet10": "body.layer2",
    "vit-tiny": "body.body.encoder.layers.encoder_layer_1",
    "convnext-nano": "body.body.features.3",
    # torchvision bodies behind _Grey3 and the upsampling of thumbnails (surrogate._AtLeast)
    "mobilenetv3-small": "body.body.body.features.3",
    "efficientnet-b0": "body.body.body.features.3",
    "densenet121": "body.body.body.features.denseblock2",
}


def feature_layer(surrogate: Any) -> Any:
    """The module whose output the feature losses read, or ``None`` for a model without one
    (a user's TorchScript file: the attack falls back to the output loss for it)."""
    name = FEATURE_LAYERS.get(surrogate.info.arch)
    if name is None:
        return None
    return dict(surrogate.model.named_modules())[name]


@contextlib.contextmanager
def captured(module: Any) -> Iterator[list[Any]]:
    """The outputs ``module`` produces inside the block, in order."""
    outputs: list[Any] = []
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def paired_views(x: Any, adv: Any, surrogate: Any, diversity: float, generator: Any,
                 transform: str) -> tuple[Any, Any]:
    """``x`` and ``adv`` as ``surrogate`` takes them, through one and the same random
    transformation (drawn with probability ``diversity``): stacked as channels, transformed,
    split again."""
    import torch

    from .diversity import transform as transformed
    from .surrogate import as_input, match_channels

    if diversity > 0 and float(torch.rand((), generator=generator)) < diversity:
        channels = surrogate.info.channels
        both = torch.cat([match_channels(x, channels), match_channels(adv, channels)], 1)
        both = transformed(both, transform, surrogate.info.input_size, generator)
        return both[:, :channels], both[:, channels:]
    return as_input(x, surrogate), as_input(adv, surrogate)


def _fia_weights(surrogate: Any, layer: Any, view: Any, labels: Any, generator: Any) -> Any:
    """FIA's aggregate gradient: d(label logit)/d(features) summed over copies of ``view``
    with pixels dropped, normalized per image."""
    import torch

    total = None
    for _ in range(FIA_COPIES):
        keep = (torch.rand(view.shape, generator=generator) < FIA_KEEP).to(view)
        with captured(layer) as outs:
            logits = surrogate.model(view * keep)
        chosen = logits.gather(1, labels[:, None]).sum()
        grad, = torch.autograd.grad(chosen, outs[0])
        total = grad if total is None else total + grad
    assert total is not None
    norm = total.flatten(1).norm(dim=1).clamp_min(1e-12)
    return (total / norm.view(-1, *([1] * (total.dim() - 1)))).detach()


def feature_loss(kind: str, surrogate: Any, layer: Any, x: Any, adv: Any, labels: Any,
                 diversity: float, generator: Any, transform: str) -> Any:
    """The loss the attack ascends for ``kind`` (of :data:`FEATURE_LOSSES`), differentiable
    with respect to ``adv`` (``x`` is the clean batch)."""
    import torch

    clean_view, adv_view = paired_views(x, adv, surrogate, diversity, generator, transform)
    if kind == "fia":
        weights = _fia_weights(surrogate, layer, clean_view, labels, generator)
        with captured(layer) as outs:
            surrogate.model(adv_view)
        return -(weights * outs[0]).sum()
    if kind != "feature":
        raise ValueError(f"unknown feature loss {kind!r} (known: {', '.join(FEATURE_LOSSES)})")
    with torch.no_grad(), captured(layer) as clean_outs:
        surrogate.model(clean_view)
    with captured(layer) as outs:
        surrogate.model(adv_view)
    clean, moved = clean_outs[0].flatten(1), outs[0].flatten(1)
    distance = ((moved - clean) ** 2).sum(1).add(1e-12).sqrt()  # differentiable at x' = x
    return (distance / clean.norm(dim=1).clamp_min(1e-12)).sum()
