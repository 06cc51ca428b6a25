"""Method ``adversarial_watermark`` (issue 3, in progress): a visible logo whose position, scale
and transparency are searched against the surrogate, never touching the keep-out mask and
never larger than 1/16 of the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_gateway.pixels import pixel_digest, read_pixels
from dicom_gateway.seal import load_partner_key, restore
from dicom_gateway.seal.uids import derive_uid
from gwutil import base_config, partner, running_gateway, send, uid_secret, with_seal
from peers import RecordingSCP, copy_ct_series, medmnist_npz

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("key, name", [("retina", "retinamnist.npz"),
                                       ("pneumonia", "pneumoniamnist_balanced.npz")])
def test_white_box_watermark_respects_keepout_and_area(surrogates: dict[str, Path], key: str,
                                                       name: str) -> None:
    from dicom_gateway.protect.surrogate import load_surrogate
    from dicom_gateway.protect.train import accuracy, load_npz_split
    from dicom_gateway.protect.watermark import (_render, gradcam_keepout, render_text_logo,
                                                 search_watermark)

    s = load_surrogate(surrogates[key])
    x, y = load_npz_split(medmnist_npz(name), "test")
    x, y = x[:60], y[:60]
    logo = render_text_logo("P", 48)
    marked, overlap, largest = [], 0, 0.0
    for i in range(len(x)):
        keep = gradcam_keepout(x[i], s, 0.25)
        r = search_watermark(x[i], [s], logo, keepout=keep, label=int(y[i]), generations=8)
        marked.append(r.image)
        p = r.params
        _, mask = _render(x[i], logo, torch.tensor([[p["x"], p["y"], p["height"], p["alpha"]]]))
        overlap += int(((mask[0] > 0.02) & keep).sum())
        largest = max(largest, p["height"] * p["width"] / (28 * 28))
    protected = torch.round(torch.stack(marked) * 255) / 255
    clean_acc, wm_acc = accuracy(s.model, x, y), accuracy(s.model, protected, y)
    print(f"\n{name} (first {len(x)} test images): clean {clean_acc:.3f}, white-box watermarked "
          f"{wm_acc:.3f}, keep-out overlap {overlap} px, largest logo box {largest:.4f} of the image")
    assert overlap == 0
    assert largest <= 1 / 16 + 1e-6
    assert wm_acc < clean_acc


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
