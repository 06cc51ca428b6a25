"""Test helpers for REAL DICOM peers (one import point for tests and fixtures).

* :mod:`peers_base` - ``free_port``, network-namespace guard, process and pixel-hash helpers
* :mod:`peers_orthanc` - ``OrthancPeer``: a real Orthanc 1.10 server process
* :mod:`peers_scp` - ``RecordingSCP``: in-process pynetdicom SCP with scripted misbehaviour
* :mod:`peers_dcmtk` - ``dcmtk_storescu`` / ``DcmtkStoreSCP``
* :mod:`peers_data` - the shared real CT series and a mixed-syntax multi-series study

``tests/`` is not a package: these modules import each other as top-level modules
(pytest's default ``prepend`` import mode puts ``tests/`` on ``sys.path``).
Orthanc and storescp listen on all interfaces, so they only start inside a
private network namespace (:func:`require_private_netns`), e.g.::

    unshare --net bash -c 'ip link set lo up && .venv/bin/python -m pytest tests -q'
"""

from __future__ import annotations

from peers_base import (
    ALLOW_HOST_NET_ENV,
    LOCALHOST,
    free_port,
    in_private_netns,
    log_tail,
    pixel_sha256_of,
    require_private_netns,
    stop_process,
    wait_listening,
)
from peers_data import (
    CT_SERIES_SUBDIR,
    DATA_ENV,
    MULTISERIES_SOURCES,
    build_multiseries_study,
    build_segmentation,
    copy_ct_series,
    fundus_dicom,
    medmnist_npz,
    msd_lung_h5,
    require_shared_data,
    shared_data_dir,
)
from peers_dcmtk import DcmtkStoreSCP, dcmtk_env, dcmtk_storescu
from peers_orthanc import OrthancPeer
from peers_scp import RecordingSCP

__all__ = [
    "ALLOW_HOST_NET_ENV",
    "CT_SERIES_SUBDIR",
    "DATA_ENV",
    "LOCALHOST",
    "MULTISERIES_SOURCES",
    "DcmtkStoreSCP",
    "OrthancPeer",
    "RecordingSCP",
    "build_multiseries_study",
    "build_segmentation",
    "copy_ct_series",
    "dcmtk_env",
    "dcmtk_storescu",
    "free_port",
    "fundus_dicom",
    "in_private_netns",
    "log_tail",
    "medmnist_npz",
    "msd_lung_h5",
    "pixel_sha256_of",
    "require_private_netns",
    "require_shared_data",
    "shared_data_dir",
    "stop_process",
    "wait_listening",
]
