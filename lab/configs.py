"""Configuration text of the lab's servers and tools: pure functions, no I/O."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

# Characters a ganesha quoted string may hold: it has no escapes, and a newline ends the block.
_GANESHA_SAFE = re.compile(r'[^"\\\n\r\x00]*')


def registry_config(
    storage: Path,
    port: int,
    *,
    secret: str,
    htpasswd: Path | None = None,
    realm: str = "waltd-lab",
    access_log: bool = False,
) -> str:
    """`docker-registry serve` configuration: filesystem storage, 127.0.0.1:`port`.

    With `htpasswd` (a bcrypt file) every request needs basic authentication. With
    `access_log` every request is written to stdout, one line each (Apache combined format).
    """
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    config: dict[str, object] = {
        "version": "0.1",
        # As a production registry is set up: no access log unless asked, blob descriptors
        # cached.
        "log": {"level": "warn", "accesslog": {"disabled": not access_log}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secret},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": realm, "path": str(htpasswd)}}
    return yaml.safe_dump(config, sort_keys=False)


@dataclass(frozen=True)
class NfsExport:
    """One ganesha export: the image's real mount point seen by `clients` at `pseudo`."""

    export_id: int
    path: Path
    pseudo: PurePosixPath | str
    clients: tuple[str, ...]


def _ganesha_str(value: str) -> str:
    if not _GANESHA_SAFE.fullmatch(value):
        raise ValueError(f"cannot be written in a ganesha configuration: {value!r}")
    # quoted: node paths hold ':' (a MAC), which ganesha's parser rejects bare
    return f'"{value}"'


def ganesha_conf(recovery_root: Path, exports_file: Path) -> str:
    """ganesha.nfsd main configuration: NFS v3 and v4 over TCP, exports in `exports_file`.

    The exports are `%include`d so that rewriting that file and sending SIGHUP changes them.
    """
    return (
        "NFS_CORE_PARAM {\n"
        "    Protocols = 3, 4;\n"
        "    Enable_UDP = false;\n"
        "    Enable_NLM = false;\n"
        "    Enable_RQUOTA = false;\n"
        "    Mount_Path_Pseudo = true;\n"
        "}\n"
        "NFSV4 {\n"
        "    Graceless = true;\n"
        "    RecoveryBackend = fs;\n"
        f"    RecoveryRoot = {_ganesha_str(str(recovery_root))};\n"
        "}\n"
        "NFS_KRB5 { Active_krb5 = false; }\n"
        f"%include {_ganesha_str(str(exports_file))}\n"
    )


def ganesha_exports(exports: Iterable[NfsExport]) -> str:
    """The `%include`d exports file: read-only, no_root_squash, one EXPORT block each."""
    blocks: list[str] = []
    seen: set[int] = set()
    for export in exports:
        if not 0 < export.export_id < 65536 or export.export_id in seen:
            raise ValueError(f"export ids must be unique in 1..65535: {export.export_id}")
        seen.add(export.export_id)
        if not export.clients:
            raise ValueError(f"export {export.export_id} has no client")
        clients = ", ".join(str(ipaddress.ip_address(c)) for c in export.clients)
        blocks.append(
            "EXPORT {\n"
            f"    Export_Id = {export.export_id};\n"
            f"    Path = {_ganesha_str(str(export.path))};\n"
            f"    Pseudo = {_ganesha_str(str(export.pseudo))};\n"
            "    Access_Type = NONE;\n"
            "    Squash = No_Root_Squash;\n"
            "    Protocols = 3, 4;\n"
            "    Transports = TCP;\n"
            "    SecType = sys;\n"
            "    FSAL { Name = VFS; }\n"
            f"    CLIENT {{ Clients = {clients}; Access_Type = RO; }}\n"
            "}\n"
        )
    return "".join(blocks)


# Marker of the line the udhcpc script prints for the lab to read the lease.
LEASE_MARKER = "walt-lab-lease"


def udhcpc_script(busybox: str) -> str:
    """Event script of `busybox udhcpc` (busybox ships none): set the leased address, report it."""
    return (
        "#!/bin/sh\n"
        "# udhcpc runs this with the event in $1 and the lease in the environment\n"
        f"bb={_shell_word(busybox)}\n"
        'case "$1" in\n'
        '    deconfig) "$bb" ip -4 addr flush dev "$interface" ;;\n'
        "    bound|renew)\n"
        '        "$bb" ip -4 addr flush dev "$interface"\n'
        '        "$bb" ip addr add "$ip/$mask" dev "$interface"\n'
        f'        echo "{LEASE_MARKER} $ip/$mask" ;;\n'
        "esac\n"
    )


def _shell_word(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", value):
        raise ValueError(f"unexpected characters in path {value!r}")
    return value
