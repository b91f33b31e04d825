"""The Docker Registry HTTP API v2 as text and data: pure functions, no I/O.

Media types and the choice of a manifest's type, the `WWW-Authenticate` challenge, `Link`
pagination, `Retry-After`, the error codes of an error answer, and which token scope a request
path needs.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDictProxy
from yarl import URL

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST_V2 = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MANIFESTS = (MANIFEST_V2, OCI_MANIFEST)
LISTS = (MANIFEST_LIST_V2, OCI_INDEX)
ACCEPT = ", ".join((*IMAGE_MANIFESTS, *LISTS))
SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
IMAGE_CONFIGS = (
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
)
# What a manifest answer may be labelled with besides a manifest type (registries vary).
READABLE_MANIFESTS = (*IMAGE_MANIFESTS, *LISTS, "application/json", "application/octet-stream")

_ERROR_CODE = re.compile(r"[A-Z][A-Z_]{0,63}")
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?', re.I)
_CHALLENGE_PARAM = re.compile(r'([A-Za-z]+)\s*=\s*(?:"([^"]*)"|([^\s,]*))')
_SCOPE_PATH = re.compile(r"/v2/(.+)/(?:tags/list|manifests/[^/]+|blobs/[^/]+)")
_IMAGE_OBJECT_PATH = re.compile(r"/v2/.+/(?:manifests|blobs)/[^/]+")  # one image's, not a list


def size_text(n: int) -> str:
    """`n` bytes as people read a limit: `8 MiB`, `64 KiB`, else `N bytes`."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


def mime(headers: Mapping[str, str]) -> str:
    """The media type of an answer's `Content-Type`, lower case, without parameters."""
    return headers.get("Content-Type", "").split(";")[0].strip().lower()


def error_code(body: bytes) -> str | None:
    """The first `errors[].code` of a registry's error answer, when it is a plain code."""
    try:
        code = json.loads(body)["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """`Retry-After` in seconds (a number or an HTTP date); None when absent or unreadable."""
    raw = headers.get("Retry-After", "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def challenge(headers: CIMultiDictProxy[str]) -> tuple[str, dict[str, str]] | None:
    """The scheme ("bearer" preferred, or "basic") and parameters of `WWW-Authenticate`."""
    found: dict[str, dict[str, str]] = {}
    for value in headers.getall("WWW-Authenticate", []):
        scheme, _, rest = value.strip().partition(" ")
        params = {k.lower(): quoted or bare for k, quoted, bare in _CHALLENGE_PARAM.findall(rest)}
        if scheme.lower() in ("bearer", "basic"):
            found.setdefault(scheme.lower(), params)
    for scheme in ("bearer", "basic"):
        if scheme in found:
            return scheme, found[scheme]
    return None


def manifest_type(header_type: str | None, data: Mapping[str, Any]) -> str | None:
    """A manifest's media type: its own `mediaType`, else the answer's, else by its shape."""
    declared = data.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if header_type in (*IMAGE_MANIFESTS, *LISTS, *SCHEMA1):
        return header_type
    if isinstance(data.get("manifests"), list):
        return OCI_INDEX
    if isinstance(data.get("config"), dict):
        return OCI_MANIFEST
    if data.get("schemaVersion") == 1:
        return SCHEMA1[0]
    return None


def join(base: URL, reference: str) -> URL | None:
    """`reference` (from a header) resolved against `base`; None when it is no URL."""
    try:
        return base.join(URL(reference))
    except ValueError:
        return None


def next_page(headers: CIMultiDictProxy[str]) -> str | None:
    """The target of `Link: <...>; rel="next"` (as written: resolve it with `join`), or None."""
    match = _LINK_NEXT.search(", ".join(headers.getall("Link", [])))
    return match.group(1) if match else None


def scope(path: str) -> str:
    """The token scope a request path (below the registry's base) needs: pull on its
    repository, or the catalog."""
    match = _SCOPE_PATH.fullmatch(path)
    if match:
        return f"repository:{match.group(1)}:pull"
    return "registry:catalog:*"


def is_image_object(path: str) -> bool:
    """Whether a path (below the registry's base) is one image's manifest or blob, not a list."""
    return _IMAGE_OBJECT_PATH.fullmatch(path) is not None
