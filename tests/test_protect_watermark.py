"""Method ``adversarial_watermark`` (issue 3, in progress): a visible logo whose position, scale
and transparency are searched against the surrogate, never touching the keep-out mask and
never larger than 1/16 of the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from gwutil import base_config, partner, running_gateway, send, uid_secret, with_seal
from peers import RecordingSCP, copy_ct_series, medmnist_npz

from dicom_gateway.pixels import pixel_digest, read_pixels
from dicom_gateway.seal import load_partner_key, restore
from dicom_gateway.seal.uids import derive_uid

# Issue 3 asks <= 15 % white-box. Not reachable at 28x28 with a 25 % Grad-CAM keep-out and a
# 1/16 footprint (7x7 px): even an adversarial patch of any content at every allowed 7x7
# position (PGD, 60-100 steps) leaves ~18 % (PneumoniaMNIST) and ~22 % (RetinaMNIST) of a
# 60-image sample correct; RetinaMNIST's are class 0, as for the perturbation. The defaults
# reached RetinaMNIST 0.18-0.38 and PneumoniaMNIST 0.17-0.37 over five trainings of the
# surrogate (docs/protection.md; the previous search: 0.36-0.45 and 0.53-0.62); the ceilings
# leave a margin for the next training and guard against regressions.
_WATERMARK_CEILING = {"retina": 0.50, "pneumonia": 0.45}


@pytest.mark.parametrize("key, name", [("retina", "retinamnist.npz"),
                                       ("pneumonia", "pneumoniamnist_balanced.npz")])
def test_white_box_watermark_respects_keepout_and_area(surrogates: dict[str, Path], key: str,
                                                       name: str) -> None:
    from dicom_gateway.lab.train import accuracy, load_npz_split
    from dicom_gateway.protect.surrogate import load_surrogate
    from dicom_gateway.protect.watermark import (
        DEFAULTS,
        gradcam_keepout,
        load_logo,
        search_settings,
        search_watermark,
    )

    s = load_surrogate(surrogates[key])
    x, y = load_npz_split(medmnist_npz(name), "test")
    # a seeded sample: the splits are sorted by class (PneumoniaMNIST's first 234 test images
    # are all pneumonia), so the first images are not representative
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:60]
    x, y = x[pick], y[pick]
    defaults = DEFAULTS
    logo = load_logo(None, defaults["logo_text"], defaults["logo_style"])
    marked, overlap, largest = [], 0, 0.0
    for i in range(len(x)):
        keep = gradcam_keepout(x[i], s, defaults["keepout_saliency"])
        r = search_watermark(x[i], [s], logo, keepout=keep, label=int(y[i]),
                             **search_settings({}))  # the method's defaults
        stored = torch.round(r.image * 255)
        changed = (stored != torch.round(x[i] * 255)).any(0)  # judged on the stored pixels
        overlap += int((changed & keep).sum())
        if changed.any():
            where = torch.nonzero(changed)
            h, w = (where.max(0).values - where.min(0).values + 1).tolist()
            largest = max(largest, h * w / (28 * 28))
        marked.append(stored / 255)
    protected = torch.stack(marked)  # the stored uint8 values
    clean_acc, wm_acc = accuracy(s.model, x, y), accuracy(s.model, protected, y)
    print(f"\n{name} ({len(x)} seeded test images): clean {clean_acc:.3f}, white-box "
          f"watermarked {wm_acc:.3f}, changed pixels in the keep-out {overlap}, largest box of "
          f"changed pixels {largest:.4f} of the image")
    assert overlap == 0
    assert largest <= 1 / 16 + 1e-6
    assert wm_acc < clean_acc and wm_acc <= _WATERMARK_CEILING[key]


def test_gateway_watermarks_ct_slices(tmp_path: Path, surrogates: dict[str, Path]) -> None:
    files = copy_ct_series(tmp_path / "ct")[:3]
    with RecordingSCP(store_dir=tmp_path / "out") as scp:
        raw = base_config(tmp_path / "spool", [partner("recorder", scp.port)],
                          [{"name": "ct", "match": {}, "to": ["recorder"], "profile": "mark"}])
        raw["profiles"]["mark"] = {"method": "adversarial_watermark", "generations": 3,
                                   "surrogates": [str(surrogates["pneumonia"])]}
        with_seal(raw, tmp_path / "keys")
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, files) == [0] * 3
            assert scp.wait_for_count(3, timeout=120) == 3
    for f in files:
        before = pydicom.dcmread(f)
        derived = derive_uid(uid_secret(tmp_path / "keys"), "recorder",
                             str(before.SOPInstanceUID))
        after = pydicom.dcmread(tmp_path / "out" / f"{derived}.dcm")  # sealed: derived UIDs
        assert after.BurnedInAnnotation == "YES" and after.ImageType[0] == "DERIVED"
        back = restore(after, load_partner_key(tmp_path / "keys" / "partners" / "recorder.key"))
        assert pixel_digest(read_pixels(back).values) == pixel_digest(read_pixels(before).values)
        changed = np.argwhere(after.pixel_array != before.pixel_array)
        assert len(changed)  # a visible mark was burnt in ...
        (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
        assert (y1 - y0 + 1) * (x1 - x0 + 1) <= 512 * 512 / 16 * 1.05  # ... inside a small box
