"""The attack's input transformations: shapes, differentiability, repeatability, and that
each one changes the image the way its name says."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dicom_gateway.protect.diversity import TRANSFORMS, transform  # noqa: E402


def _image() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 1, 60, 48, generator=g)


@pytest.mark.parametrize("kind", TRANSFORMS)
def test_a_transform_is_differentiable_seeded_and_sized(kind: str) -> None:
    x = _image().requires_grad_(True)
    out = transform(x, kind, (32, 40), torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 32, 40)
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    again = transform(x.detach(), kind, (32, 40), torch.Generator().manual_seed(0))
    assert torch.equal(out.detach(), again)
    other = transform(x.detach(), kind, (32, 40), torch.Generator().manual_seed(5))
    assert not torch.equal(out.detach(), other)


def test_block_shuffle_keeps_the_content_of_its_blocks() -> None:
    # without rotation, the shuffled image holds the same pixels in another order
    from dicom_gateway.protect.diversity import block_shuffle

    x = _image()
    out = block_shuffle(x, torch.Generator().manual_seed(3), max_angle=0.0)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    assert torch.allclose(out.sum(dim=(2, 3)), x.sum(dim=(2, 3)), rtol=1e-4)


def test_augment_stays_in_range_and_moves_the_image() -> None:
    from dicom_gateway.protect.diversity import practitioner_augment

    x = _image()
    out, _ = practitioner_augment(x, generator=torch.Generator().manual_seed(2))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out - x).abs().mean()) > 0.01


def test_an_unknown_transform_is_named() -> None:
    with pytest.raises(ValueError, match="unknown transformation 'mixup'"):
        transform(_image(), "mixup", (8, 8), torch.Generator())
