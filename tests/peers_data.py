"""Sample DICOM data: the shared real CT series and a synthetic multi-series study."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

__all__ = [
    "CT_SERIES_SUBDIR",
    "DATA_ENV",
    "MULTISERIES_SOURCES",
    "build_multiseries_study",
    "build_segmentation",
    "copy_ct_series",
    "fundus_dicom",
    "medmnist_npz",
    "msd_lung_h5",
    "require_shared_data",
    "shared_data_dir",
]

DATA_ENV = "DICOM_GATEWAY_DATA"
CT_SERIES_SUBDIR = Path("dicom") / "ct_kits_series"


def _data_root() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared" / "data"  # <repo>/../shared/data
    return Path(os.environ.get(DATA_ENV) or default)


def shared_data_dir() -> Path | None:
    """``$DICOM_GATEWAY_DATA`` (default ``<repo>/../shared/data``) if it holds the CT series."""
    base = _data_root()
    return base if (base / CT_SERIES_SUBDIR).is_dir() else None


def require_shared_data() -> Path:
    """Return :func:`shared_data_dir` or skip the calling test naming the expected path."""
    base = shared_data_dir()
    if base is None:
        expected = _data_root() / CT_SERIES_SUBDIR
        pytest.skip(f"shared test data absent: expected {expected} (set {DATA_ENV})")
    return base


def copy_ct_series(
    dest: Path,
    n_instances: int | None = None,
    study_uid: str | None = None,
    *,
    fresh_uids: bool = False,
) -> list[Path]:
    """Copy the real 18-slice CT series into ``dest`` (skips if the data is absent).

    ``n_instances`` beyond 18 cycles through the slices with fresh SOPInstanceUIDs
    and InstanceNumbers (same series).  ``study_uid`` sets StudyInstanceUID on all;
    ``fresh_uids`` gives every instance and the series new UIDs (for a second,
    distinct copy).  Untouched slices are copied byte for byte.
    """
    sources = sorted((require_shared_data() / CT_SERIES_SUBDIR).glob("*.dcm"))
    count = len(sources) if n_instances is None else n_instances
    series_uid = generate_uid() if fresh_uids else None
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index in range(count):
        source = sources[index % len(sources)]
        target = dest / f"ct_{index + 1:05d}.dcm"
        replica = index >= len(sources)
        if not (replica or fresh_uids or study_uid):
            shutil.copyfile(source, target)
        else:
            ds = pydicom.dcmread(source)
            if replica or fresh_uids:
                ds.SOPInstanceUID = generate_uid()
                ds.InstanceNumber = index + 1
            if series_uid:
                ds.SeriesInstanceUID = series_uid
            if study_uid:
                ds.StudyInstanceUID = study_uid
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


# One series per file: (pydicom test file, transfer syntax it exercises).
MULTISERIES_SOURCES = (
    "CT_small.dcm",  # CT, explicit VR little endian
    "MR_small.dcm",  # MR, explicit VR little endian
    "MR_small_RLE.dcm",  # MR, RLE lossless
    "MR_small_jpeg_ls_lossless.dcm",  # MR, JPEG-LS lossless
    "MR_small_jp2klossless.dcm",  # MR, JPEG 2000 lossless
    "JPEG2000.dcm",  # SC (NM), JPEG 2000
    "examples_rgb_color.dcm",  # US, RGB, explicit VR little endian
    "SC_rgb_rle_2frame.dcm",  # SC, RGB multi-frame, RLE
    "SC_rgb_jpeg_dcmtk.dcm",  # SC, YBR_FULL, JPEG baseline (lossy)
)


def build_multiseries_study(dest: Path, study_uid: str | None = None) -> list[Path]:
    """Write a 9-series / 9-instance study from pydicom's bundled test files.

    All share a new StudyInstanceUID (or ``study_uid``) and one made-up patient;
    each source file gets its own SeriesInstanceUID and a fresh SOPInstanceUID.
    Original transfer syntaxes (incl. compressed) are kept.
    """
    study_uid = study_uid or generate_uid()
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for number, name in enumerate(MULTISERIES_SOURCES, 1):
        source = get_testdata_file(name)
        if source is None:
            raise FileNotFoundError(f"pydicom test file {name} not found")
        ds = pydicom.dcmread(source)
        ds.PatientName, ds.PatientID = "GATEWAY^MULTISERIES", "GWTEST0001"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study_uid, "1", "GWACC0001"
        ds.StudyDate, ds.StudyTime, ds.StudyDescription = (
            "20240101",
            "120000",
            "Gateway multiseries",
        )
        ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), number
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), 1
        ds.Modality = ds.get("Modality") or "OT"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = dest / f"{number:02d}_{Path(name).stem}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def medmnist_npz(name: str) -> Path:
    """A MedMNIST ``.npz`` from the shared data, or skip naming the expected path."""
    base = shared_data_dir()
    path = (base / "medmnist" / name) if base else None
    if path is None or not path.is_file():
        pytest.skip(f"shared MedMNIST data absent: expected .../shared/data/medmnist/{name}")
    return path


def msd_lung_h5(split: str) -> Path:
    """An MSD lung patch file (``val`` or ``test``) from the shared data, or skip."""
    base = shared_data_dir()
    path = ((base / "segmentation" / "msd_lung_2mm_patches" / f"{split}_patches.h5")
            if base else None)
    if path is None or not path.is_file():
        pytest.skip(f"shared MSD lung patches absent: expected "
                    f".../shared/data/segmentation/msd_lung_2mm_patches/{split}_patches.h5")
    return path


def build_segmentation(images: list[Path], rois: dict[int, tuple[int, int, int]],
                       dest: Path) -> Path:
    """Write a binary DICOM SEG (one segment, one frame per ROI) for ``images`` of one series:
    ``rois`` maps an index into ``images`` to a disc ``(row, column, radius)``."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import pack_bits
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    first = pydicom.dcmread(images[0], stop_before_pixels=True)
    rows, cols = int(first.Rows), int(first.Columns)
    yy, xx = np.mgrid[:rows, :cols]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyID",
                "AccessionNumber", "FrameOfReferenceUID"):
        if key in first:
            setattr(ds, key, first.get(key))
    ds.Modality, ds.SeriesInstanceUID = "SEG", generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 99, 1
    ds.SegmentationType, ds.ContentLabel = "BINARY", "ROI"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, cols, 1, 1, 0
    ds.PixelRepresentation, ds.LossyImageCompression = 0, "00"
    segment = Dataset()
    segment.SegmentNumber, segment.SegmentLabel = 1, "lesion"
    segment.SegmentAlgorithmType = "MANUAL"
    ds.SegmentSequence = Sequence([segment])
    frames, groups = [], []
    for index, (r, c, radius) in sorted(rois.items()):
        frames.append(((yy - r) ** 2 + (xx - c) ** 2 <= radius ** 2).astype(np.uint8))
        source = Dataset()
        source.ReferencedSOPClassUID = first.SOPClassUID
        source.ReferencedSOPInstanceUID = pydicom.dcmread(images[index],
                                                          stop_before_pixels=True).SOPInstanceUID
        derivation = Dataset()
        derivation.SourceImageSequence = Sequence([source])
        ident = Dataset()
        ident.ReferencedSegmentNumber = 1
        group = Dataset()
        group.DerivationImageSequence = Sequence([derivation])
        group.SegmentIdentificationSequence = Sequence([ident])
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = pack_bits(np.stack(frames))
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def fundus_dicom(dest: Path, name: str = "Image_01L.jpg") -> Path:
    """A CHASE_DB1 fundus photo (999x960 RGB) wrapped into a VL Photographic Image (or skip)."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    base = shared_data_dir()
    src = (base / "segmentation" / "chasedb1" / name) if base else None
    if src is None or not src.is_file():
        pytest.skip(f"shared CHASE_DB1 data absent: expected .../shared/data/segmentation/"
                    f"chasedb1/{name}")
    rgb = np.asarray(Image.open(src).convert("RGB"))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"  # VL Photographic
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "CHASE01", "Fundus^Test", "XC"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest
