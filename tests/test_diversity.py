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


def test_spectrum_simulation_is_a_dct_round_trip_with_scaled_coefficients() -> None:
    from dicom_gateway.protect.diversity import dct_matrix, spectrum

    d = dct_matrix(40)
    assert torch.allclose(d @ d.T, torch.eye(40), atol=1e-5)  # orthonormal
    x = _image()
    g = torch.Generator().manual_seed(2)
    # without noise and with every coefficient kept, the image comes back as it was
    assert torch.allclose(spectrum(x, g, sigma=0.0, rho=0.0), x, atol=1e-5)
    # with the paper's settings, each DCT coefficient of the copy stays within
    # [1 - rho, 1 + rho] of the original's, up to the noise
    out = spectrum(x, g, sigma=0.0)
    dh, dw = dct_matrix(60), dct_matrix(48)
    ratio = (dh @ out @ dw.T) / (dh @ x @ dw.T)
    assert float(ratio.min()) >= 0.5 - 1e-3 and float(ratio.max()) <= 1.5 + 1e-3
    assert float(ratio.std()) > 0.2  # the scaling is drawn per coefficient


def test_auto_picks_the_transform_by_image_size() -> None:
    """``transform: auto``: resize-and-pad on thumbnails, the partner's augmentation from 64 px
    up; the attack with ``auto`` gives the images of the transform it stands for (same seed).
    The default is ``augment`` at every size (decision 0034)."""
    from dicom_gateway.protect.diversity import transform_for
    from dicom_gateway.protect.options import PerturbationOptions
    from dicom_gateway.protect.perturbation import attack

    assert PerturbationOptions.__dataclass_fields__["transform"].default == "augment"
    assert transform_for("auto", 28, 28) == "resize-pad"
    assert transform_for("auto", 63, 512) == "resize-pad"
    assert transform_for("auto", 64, 64) == transform_for("auto", 224, 224) == "augment"
    assert transform_for("spectrum", 28, 28) == "spectrum"

    class _Surrogate:  # a tiny linear classifier at the image's size
        def __init__(self) -> None:
            from dicom_gateway.protect.surrogate import SurrogateInfo

            torch.manual_seed(0)
            self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 2))
            self.info = SurrogateInfo("cnn-small", "classification", (28, 28), 1, ("a", "b"),
                                      (0.0,), (1.0,))

    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    s = _Surrogate()
    auto = attack(x, [s], epsilon=4 / 255, steps=3, transform="auto")
    assert torch.equal(auto, attack(x, [s], epsilon=4 / 255, steps=3, transform="resize-pad"))
    assert not torch.equal(auto, attack(x, [s], epsilon=4 / 255, steps=3, transform="augment"))
