"""A stand-in for waltd's boot HTTP server, for lab tests that boot a node without waltd.

The lab runs it as `nsenter --net=SERVER-NS python -I boot_http.py ROOT ADDRESS PORT`. It
answers as the contract says waltd does: `GET|HEAD /boot/<path>` is the file <path> of the
caller's node's boot folder (ROOT/nodes/by-ip/<caller's address>/tftp/), and
`GET /boot/booted` is the node's booted report, answered `ok` and printed on stdout as
`booted <address>` (the test reads that line from the log). Every request is printed too.
Standard library only: it runs isolated (`-I`), without the project on its path.
"""

from __future__ import annotations

import http.server
import os
import shutil
import stat
import sys
from pathlib import Path

BOOTED_LINE = "booted"
_MAX_PATH = 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.client_address[0]} {format % args}", flush=True)

    def _file(self) -> Path | None:
        """The file the request names, inside the caller's boot folder, or None."""
        path = self.path.partition("?")[0]
        if not path.startswith("/boot/") or len(path) > _MAX_PATH or "\0" in path:
            return None
        parts = path.removeprefix("/boot/").split("/")
        if any(part in ("", ".", "..") for part in parts):
            return None
        folder = (self.root / "nodes" / "by-ip" / self.client_address[0] / "tftp").resolve()
        target = folder.joinpath(*parts).resolve()
        if not target.is_relative_to(folder):
            return None
        try:
            if not stat.S_ISREG(target.stat().st_mode):
                return None
        except OSError:
            return None
        return target

    def _answer(self, body: bool) -> None:
        if self.path == "/boot/booted":
            print(f"{BOOTED_LINE} {self.client_address[0]}", flush=True)
            self._send(200, b"ok\n", body)
            return
        target = self._file()
        if target is None:
            self._send(404, b"not found\n", body)
            return
        with open(target, "rb") as source:
            self.send_response(200)
            self.send_header("Content-Length", str(os.fstat(source.fileno()).st_size))
            self.end_headers()
            if body:
                shutil.copyfileobj(source, self.wfile)

    def _send(self, status: int, text: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if body:
            self.wfile.write(text)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)


def main() -> None:
    root, address, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    _Handler.root = root
    _Handler.protocol_version = "HTTP/1.1"  # keep-alive: iPXE fetches both files on one
    server = http.server.ThreadingHTTPServer((address, port), _Handler)
    server.daemon_threads = True
    print(f"serving {root} on {address}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
