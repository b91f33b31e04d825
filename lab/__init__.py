"""The lab-in-a-box: a node network in namespaces, simulated nodes, real test registries, NFS.

Not part of waltd (the wheel leaves it out): the tests' fixtures, the benchmarks and `make demo`
import it from the repository root. Needs root. See `lab.py` for the layout and `record.py` for
how a lab killed mid-run is cleared by the next one.
"""

from lab.images import build_image, exportable_mount, image_id, pull_image, push_image
from lab.lab import Lab, LabError, LabProcess, Node, Registry
from lab.nfs import Ganesha, ganesha
from lab.record import clear_stale_labs, records_locked
from waltd.provision.nfs import NfsExport, fsid_of

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
    "fsid_of",
    "ganesha",
    "image_id",
    "pull_image",
    "push_image",
    "records_locked",
]
