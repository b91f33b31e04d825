"""`waltd-dhcp-event`: dnsmasq's dhcp-script when dnsmasq has no Lua, handing each call over
to the daemon (with Lua, `provision/dhcp_hook.lua` does the same inside dnsmasq).

dnsmasq runs this hook one call at a time and waits for it, so its start-up cost is paid once
per lease, one lease after another: in a storm of booting nodes it sets the pace. It imports
only built-in modules (`_json`, the C half of `json`, whose Python half costs more to import
than the rest of a call) and nothing of waltd's, and dnsmasq runs it through `hook_script`,
an interpreter started with `-I -S` (no site packages to scan): a call takes about the
interpreter's start and one fsync.
It writes the event as one file into the daemon's spool folder (written, synced, then renamed
into place: durable before the hook reports success), where the daemon's inotify watch sees
it land. The daemon removes a file only once the event is committed to its database, so an
event the hook handed over survives a daemon that is frozen, killed or not running at all.

Calls (from dnsmasq's manual): `add|old|del MAC IP [HOSTNAME]` with DNSMASQ_VENDOR_CLASS,
DNSMASQ_USER_CLASS0.., DNSMASQ_INTERFACE in the environment; `tftp SIZE IP FILE` after a
TFTP transfer; `init` (lease database dump, not used here: it must print nothing).
"""

from __future__ import annotations

import _json
import os
import sys
import time

SPOOL_ENV = "WALTD_EVENT_SPOOL"
MAX_MESSAGE = 8192  # the daemon reads spooled events of at most this size


def build_event(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> dict[str, object]:
    """The message for one hook call: argv without the program name, dnsmasq's environment."""
    if not argv:
        raise ValueError("no action given")
    action = argv[0]
    event: dict[str, object] = {"action": action, "time": time.time()}
    if action == "tftp":
        size, ip, file = ([*argv[1:], "", "", ""])[:3]
        event |= {"size": size, "ip": ip, "file": file}
        return event
    mac, ip, hostname = ([*argv[1:], "", "", ""])[:3]
    user_classes = []
    for i in range(16):
        value = environ.get(f"DNSMASQ_USER_CLASS{i}")
        if value is None:
            break
        user_classes.append(value)
    event |= {
        "mac": mac,
        "ip": ip,
        "hostname": hostname or None,
        "vendor_class": environ.get("DNSMASQ_VENDOR_CLASS"),
        "user_classes": user_classes,
        "interface": environ.get("DNSMASQ_INTERFACE"),
    }
    return event


def _json_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        # what json.dumps writes by default: ASCII, with \uXXXX escapes
        return str(_json.encode_basestring_ascii(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_json_value(item) for item in value) + "]"
    raise TypeError(f"no JSON for {type(value).__name__}")


def encode(event: dict[str, object]) -> bytes:
    """The message, JSON (as `json.dumps` would write it). DHCP options are at most 255 bytes
    each, so it stays far below MAX_MESSAGE; the daemon refuses a larger one as malformed
    rather than trusting it."""
    fields = (f"{_json_value(key)}: {_json_value(value)}" for key, value in event.items())
    return ("{" + ", ".join(fields) + "}").encode()


def spool(data: bytes, folder: str) -> str:
    """Write one event file into `folder` atomically and durably; returns its path.

    Names sort in arrival order (dnsmasq runs one hook at a time). The file is written under
    a dot name (which the daemon never reads), synced, renamed, then the folder synced: the
    event is on disk before the hook reports success. (waltd.atomic does the same for files
    that replace others; it is not imported here for the start-up time it costs.)
    """
    os.makedirs(folder, mode=0o700, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}.json"
    final = os.path.join(folder, name)
    temp = os.path.join(folder, f".{name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, final)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    entry = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(entry)
    finally:
        os.close(entry)
    return final


def hook_script(python: str, package_root: str) -> str:
    """The dhcp-script dnsmasq runs: this module under `python -I -S`, importing waltd from
    `package_root` (the folder holding the `waltd` package) and nothing else. Both paths
    come from the running daemon, never from outside input."""
    return (
        f"#!{python} -IS\n"
        "import sys\n"
        f"sys.path.insert(0, {package_root!r})\n"
        "from waltd.dhcp_event import main\n"
        "sys.exit(main())\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: spool one call; never make dnsmasq wait long."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] == "init":
        return 0
    try:
        data = encode(build_event(args, os.environ))
    except ValueError:
        return 0
    folder = os.environ.get(SPOOL_ENV)
    if not folder:
        print("waltd-dhcp-event: no spool folder is set; event lost", file=sys.stderr)
        return 1
    try:
        spool(data, folder)
    except OSError as err:
        print(f"waltd-dhcp-event: cannot spool the event: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
