"""server.conf on disk: a bounded read, YAML with duplicate keys refused, atomic save.

A configuration file is refused before any byte is read when it is not a regular file (a FIFO
would block the daemon forever, a device would never end) or when it is larger than
MAX_FILE_SIZE; its YAML may nest at most MAX_DEPTH levels (a few thousand would exhaust the
parser's recursion). The secrets file (waltd/credentials.py) is read with the same bounds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from waltd.atomic import write_atomic
from waltd.config.schema import RELOADABLE, SECTIONS, Config, ConfigError, Problem, to_data
from waltd.config.validate import parse, show

# A real server.conf is a few kilobytes (4,000 registries: 270 KB); PyYAML takes 2 to 8 s of
# CPU on 1 MiB, depending on how many tokens it holds.
MAX_FILE_SIZE = 1 << 20
# A real server.conf nests 4 levels (network > walt-net > ip).
MAX_DEPTH = 32

_MERGE_TAG = "tag:yaml.org,2002:merge"


class Unreadable(Exception):
    """A file refused without being read: not a regular file, or too large."""


def read_bounded(path: Path, max_size: int = MAX_FILE_SIZE) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file of at most `max_size` bytes, and the status of what was read.

    Opened without blocking (a FIFO with no writer would block the open) and checked through
    the descriptor, so the checks apply to the file actually read. Raises OSError when it cannot
    be opened or read, Unreadable (saying why) when it is no regular file or is too large.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable(f"not a regular file ({_kind(info.st_mode)}); refused unread")
        if info.st_size > max_size:
            raise Unreadable(f"{info.st_size} bytes, over the limit of {max_size}; refused unread")
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        # One byte more than allowed: the file may have grown since fstat.
        data = file.read(max_size + 1)
    if len(data) > max_size:
        raise Unreadable(f"over the limit of {max_size} bytes; refused")
    return data, info


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


class TooDeep(yaml.MarkedYAMLError):
    """YAML nested deeper than MAX_DEPTH levels; `problem_mark` is where the limit was passed."""


class _Loader(yaml.SafeLoader):
    """A SafeLoader that bounds nesting and records duplicate keys (PyYAML keeps the last one)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, object]] = []
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        # The composer recurses once per level: past MAX_DEPTH it stops, before Python's limit.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise TooDeep(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML's constructors raise plain Python errors on malformed values (`!!float x`, an
        # int of 5,000 digits): made a YAML error at the value, its text never quoted.
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, AttributeError, IndexError, OverflowError):
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                problem=f"not a valid {kind} value", problem_mark=node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):  # `!!set` on a scalar: super() refuses it
            return super().construct_mapping(node, deep=deep)
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key, which construct_mapping refuses
            if duplicate:
                self.duplicates.append((key_node.start_mark.line + 1, key))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> tuple[object, list[tuple[int, object]]]:
    """The data of one YAML document and its duplicate keys as (line, key).

    Raises yaml.YAMLError: TooDeep past MAX_DEPTH levels, another MarkedYAMLError for a syntax
    error, yaml.reader.ReaderError for a character YAML does not allow.
    """
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def position(err: yaml.MarkedYAMLError) -> str:
    """Where a YAML error lies, `line L, column C` counted from 1; "" when PyYAML does not say."""
    mark = err.problem_mark or err.context_mark
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _problem(path: Path, text: str, where: str = "") -> ConfigError:
    return ConfigError([Problem(str(path), None, where, None, text)])


def read_data(path: Path) -> tuple[object, list[Problem]]:
    """A configuration file's YAML data, unchecked, and the problems of its duplicate keys.

    Raises ConfigError naming the file when it cannot be read, is not a regular file, is over
    MAX_FILE_SIZE, is not UTF-8 YAML or nests deeper than MAX_DEPTH.
    """
    try:
        raw, _ = read_bounded(path)
    except OSError as err:
        raise _problem(path, f"cannot read it: {err.strerror or err}") from err
    except Unreadable as err:
        raise _problem(path, str(err)) from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _problem(path, f"not UTF-8 text (byte {err.start})") from err
    try:
        data, duplicates = load_yaml(text)
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        problem = f"YAML syntax error: character #x{err.character:04x} is not allowed"
        raise _problem(path, problem, f"line {line}") from err
    except TooDeep as err:
        raise _problem(path, f"{err.problem}; a configuration needs a few", position(err)) from None
    except yaml.MarkedYAMLError as err:
        context = f" ({err.context})" if err.context else ""
        problem = f"YAML syntax error: {err.problem}{context}"
        raise _problem(path, problem, position(err)) from err
    twice = "appears twice in the same mapping; keep one"
    return data, [
        Problem(str(path), None, f"line {line}", None, f"key {show(key)} {twice}")
        for line, key in sorted(duplicates, key=lambda duplicate: duplicate[0])
    ]


def load(path: Path) -> Config:
    """Read and check a configuration file.

    An empty file (or one holding only comments) means all defaults. Raises ConfigError listing
    every problem, each naming the file, as `read_data` and `parse` find them.
    """
    data, problems = read_data(path)
    try:
        config = parse(data, str(path))
    except ConfigError as err:
        problems += err.problems
    if problems:
        raise ConfigError(problems)
    return config


def save(path: Path, config: Config) -> None:
    """Write the configuration atomically, keeping the old file's mode and owner.

    Refuses (ConfigError) a configuration that `load` would refuse. The file is replaced by
    waltd.atomic.write_atomic (through a symlink, its target): on failure the old file is
    intact. Comments in the old file are not kept.
    """
    path = Path(os.path.realpath(path))
    data = to_data(config)
    parse(data, str(path))
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    write_atomic(path, text.encode(), None)


def restart_needed(old: Config, new: Config) -> list[str]:
    """The changed sections that a reload cannot apply (those outside RELOADABLE)."""
    return [
        section
        for section, name in SECTIONS.items()
        if section not in RELOADABLE and getattr(old, name) != getattr(new, name)
    ]
