"""What the clone and publish tests share: a non-root user (tests/support/users.py) speaking HTTP on
the API socket with the system Python (as any user of the server could), and lab registries
as server.conf entries."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from lab import Registry
from tests.conftest import require_tool

# POST a JSON body to the socket, print each NDJSON line of the answer (a non-200 answer:
# its JSON body with its status).
CLIENT = r"""
import json, socket, sys
path, target, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
s = socket.socket(socket.AF_UNIX)
s.settimeout(120)
s.connect(path)
s.sendall(b"POST %s HTTP/1.0\r\nContent-Type: application/json\r\n" % target.encode()
          + b"Content-Length: %d\r\n\r\n" % len(body) + body)
f = s.makefile("rb")
status = int(f.readline().split()[1])
while f.readline() not in (b"\r\n", b""):
    pass
if status != 200:
    print(json.dumps({**json.loads(f.read()), "status": status}))
else:
    for line in f:
        print(line.decode().strip(), flush=True)
"""


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """A command to its end (2 minutes at most), output captured as text."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def client_argv(user: str, socket: Path, path: str, body: dict[str, Any]) -> list[str]:
    """The command that POSTs `body` to `path` as `user`."""
    python = require_tool("/usr/bin/python3")
    return ["runuser", "-u", user, "--", python, "-c", CLIENT, str(socket), path, json.dumps(body)]


def post_as(user: str, socket: Path, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST `body` to `path` as `user`: the records of the answer."""
    res = run(client_argv(user, socket, path, body))
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def hub_entry(url: str, description: str = "hub stand-in") -> dict[str, Any]:
    """The hub's server.conf entry, its registry API at `url` (a lab registry standing in
    for Docker Hub's)."""
    return {"label": "hub", "api": "docker-hub", "description": description, "registry-url": url}


def registry_entry(registry: Registry, label: str, auth: str = "none") -> dict[str, Any]:
    """A lab registry as a server.conf `docker-registry-v2` entry (plain HTTP)."""
    return {
        "label": label,
        "api": "docker-registry-v2",
        "description": f"lab {registry.role}",
        "host": "127.0.0.1",
        "port": registry.port,
        "protocol": "http",
        "auth": auth,
    }
