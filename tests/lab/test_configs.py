"""The lab's configuration generators and parsers, without I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lab.configs import LEASE_MARKER, registry_config, udhcpc_script

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


def test_udhcpc_script_sets_and_reports_the_lease() -> None:
    script = udhcpc_script("/usr/bin/busybox")
    assert script.startswith("#!/bin/sh\n")
    assert '"$bb" ip addr add "$ip/$mask" dev "$interface"' in script
    assert f'echo "{LEASE_MARKER} $ip/$mask"' in script
    with pytest.raises(ValueError):
        udhcpc_script("/usr/bin/busybox; rm -rf /")
