"""The lab's configuration generators and parsers, without I/O."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lab import LabError, NfsExport
from lab.configs import (
    LEASE_MARKER,
    ganesha_conf,
    ganesha_exports,
    registry_config,
    udhcpc_script,
)
from lab.images import overlay_lowerdir
from lab.record import unescape_mount_path

LAB = Path("/tmp/waltd-lab-wlabcd")


def test_registry_config_without_auth() -> None:
    config = yaml.safe_load(registry_config(LAB / "data", 5000, secret="s"))
    assert config == {
        "version": "0.1",
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": f"{LAB}/data"},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": "127.0.0.1:5000", "secret": "s"},
    }


def test_registry_config_with_htpasswd() -> None:
    config = yaml.safe_load(registry_config(LAB, 5001, secret="s", htpasswd=LAB / "htpasswd"))
    assert config["auth"] == {"htpasswd": {"realm": "waltd-lab", "path": f"{LAB}/htpasswd"}}


@pytest.mark.parametrize("port", [0, 65536])
def test_registry_config_refuses_bad_ports(port: int) -> None:
    with pytest.raises(ValueError, match="port"):
        registry_config(LAB, port, secret="s")


def test_ganesha_conf_includes_the_exports_file() -> None:
    conf = ganesha_conf(LAB / "recovery", LAB / "exports.conf")
    assert f'%include "{LAB}/exports.conf"\n' in conf
    assert f'RecoveryRoot = "{LAB}/recovery";' in conf
    assert "Protocols = 3, 4;" in conf and "Mount_Path_Pseudo = true;" in conf
    assert conf.count("{") == conf.count("}")


def test_ganesha_exports_one_block_per_node() -> None:
    text = ganesha_exports(
        [
            NfsExport(
                1, LAB / "images/abc/fs", f"{LAB}/nodes/52:54:00:00:00:01/fs", ("10.1.2.51",)
            ),
            NfsExport(
                2, LAB / "images/abc/fs", f"{LAB}/nodes/52:54:00:00:00:02/fs", ("10.1.2.52",)
            ),
        ]
    )
    blocks = re.findall(r"EXPORT \{.*?\n\}\n", text, re.S)
    assert len(blocks) == 2 and "".join(blocks) == text
    first = blocks[0]
    assert "Export_Id = 1;" in first
    assert f'Path = "{LAB}/images/abc/fs";' in first
    # quoted: ganesha's parser rejects the ':' of a MAC in a bare path
    assert f'Pseudo = "{LAB}/nodes/52:54:00:00:00:01/fs";' in first
    assert "CLIENT { Clients = 10.1.2.51; Access_Type = RO; }" in first
    assert "Access_Type = NONE;" in first and "Squash = No_Root_Squash;" in first
    assert "Protocols = 3, 4;" in first and "Transports = TCP;" in first
    assert ganesha_exports([]) == ""


@pytest.mark.parametrize(
    ("export", "message"),
    [
        (NfsExport(0, LAB, "/n", ("10.0.0.1",)), "unique"),
        (NfsExport(1, LAB, "/n", ()), "no client"),
        (NfsExport(1, LAB, '/n"; Path = "/', ("10.0.0.1",)), "cannot be written"),
        (NfsExport(1, LAB, "/n\n}", ("10.0.0.1",)), "cannot be written"),
    ],
)
def test_ganesha_exports_refuses(export: NfsExport, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ganesha_exports([export])


def test_ganesha_exports_refuses_duplicate_ids_and_bad_clients() -> None:
    with pytest.raises(ValueError, match="unique"):
        ganesha_exports([NfsExport(3, LAB, "/a", ("10.0.0.1",))] * 2)
    with pytest.raises(ValueError):
        ganesha_exports([NfsExport(3, LAB, "/a", ("10.0.0.1; Access_Type = RW",))])


def test_udhcpc_script_sets_and_reports_the_lease() -> None:
    script = udhcpc_script("/usr/bin/busybox")
    assert script.startswith("#!/bin/sh\n")
    assert '"$bb" ip addr add "$ip/$mask" dev "$interface"' in script
    assert f'echo "{LEASE_MARKER} $ip/$mask"' in script
    with pytest.raises(ValueError):
        udhcpc_script("/usr/bin/busybox; rm -rf /")


def test_unescape_mount_path() -> None:
    assert unescape_mount_path(r"/mnt/a\040b\011c\134d") == "/mnt/a b\tc\\d"
    assert unescape_mount_path("/plain") == "/plain"


MOUNTS = (
    "/dev/vda / ext4 rw,relatime 0 0\n"
    "overlay /s/overlay/x/merged overlay ro,relatime,lowerdir=/s/overlay/x/diff:/s/overlay/x/empty,"
    "redirect_dir=on 0 0\n"
    r"overlay /s/with\040space overlay ro,lowerdir=l/AB:l/CD,upperdir=/u,workdir=/w 0 0"
    "\n"
)


def test_overlay_lowerdir() -> None:
    assert overlay_lowerdir(MOUNTS, "/s/overlay/x/merged") == "/s/overlay/x/diff:/s/overlay/x/empty"
    assert overlay_lowerdir(MOUNTS, "/s/with space") == "l/AB:l/CD"
    with pytest.raises(LabError, match="no overlay"):
        overlay_lowerdir(MOUNTS, "/")
