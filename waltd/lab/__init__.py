"""The lab-in-a-box: a node network in namespaces, real test registries, NFS, virtual nodes.

Used by the tests' fixtures, the benchmarks and `make demo`; needs root. See `lab.py` for the
layout and `record.py` for how a lab killed mid-run is cleared by the next one.
"""

from waltd.lab.configs import NfsExport
from waltd.lab.images import build_image, exportable_mount, image_id, pull_image, push_image
from waltd.lab.lab import Lab, LabError, LabProcess, Node, Registry
from waltd.lab.nfs import Ganesha
from waltd.lab.record import clear_stale_labs, records_locked

__all__ = [
    "Ganesha",
    "Lab",
    "LabError",
    "LabProcess",
    "NfsExport",
    "Node",
    "Registry",
    "build_image",
    "clear_stale_labs",
    "exportable_mount",
    "image_id",
    "pull_image",
    "push_image",
    "records_locked",
]
