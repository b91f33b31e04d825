"""`walt-server-setup check` on good and broken files."""

from __future__ import annotations

from pathlib import Path

import pytest

from waltd.cli.server_setup import main


def test_check_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text("network:\n  walt-net: {interface: walt-net, ip: 192.168.152.1/22}\n")
    assert main(["--config", str(conf), "check"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "walt-net 192.168.152.1/22" in out and "hub" in out


def test_check_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text("images: {fetch-concurency: 2}\n")
    assert main(["--config", str(conf), "check"]) == 78
    err = capsys.readouterr().err
    assert str(conf) in err and "fetch-concurency" in err
