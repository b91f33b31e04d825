"""Atomic file replacement: through links, modes kept, nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from waltd.atomic import write_atomic


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_new_file_gets_its_data_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"one", 0o600)
    assert path.read_bytes() == b"one"
    assert path.stat().st_mode & 0o777 == 0o600
    assert _leftovers(tmp_path) == []


def test_a_replaced_file_keeps_its_mode_when_none_is_given(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o640)
    write_atomic(path, b"new", durable=False)
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_link_stays_and_its_target_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "f"
    target.write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to("real/f")  # relative, as an operator makes them
    write_atomic(link, b"new")
    assert link.is_symlink() and os.readlink(link) == "real/f"
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "real") == []


def test_a_chain_of_links_reaches_the_last_target(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    (tmp_path / "b").symlink_to(target)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    write_atomic(tmp_path / "a", b"new")
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()
    assert target.read_bytes() == b"new"


def test_a_linked_folder_above_the_file_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    write_atomic(tmp_path / "alias" / "f", b"data")
    assert (real / "f").read_bytes() == b"data"
    assert (tmp_path / "alias").is_symlink()
    assert _leftovers(real) == []


def test_a_link_to_a_missing_target_creates_the_target(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing")
    write_atomic(link, b"data")
    assert link.is_symlink()
    assert (tmp_path / "missing").read_bytes() == b"data"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")

    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []
