"""The API's request and response shapes, shared by the daemon and the `walt` client.

Each shape is a frozen dataclass with `to_json` (a JSON-ready dict) and `from_json` (from a
decoded JSON value). `from_json` checks types, counts and sizes and raises ValueError naming
the field (`credentials.local.password: ...`): the daemon answers it as a 400, the client
shows it as one line. Request bodies are decoded by `decode_body`, which bounds their size and
nesting before the JSON parser sees them. Pure: no I/O, no server module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# A request body: a search request with its logins takes well under a kilobyte.
MAX_BODY_BYTES = 64 * 1024
# Nesting of a request body ({"credentials": {label: {"username": ...}}} is 3 deep).
MAX_BODY_DEPTH = 8
# A number in a query string: 18 digits stay below 2**63 (int() of 5,000 digits raises).
MAX_QUERY_DIGITS = 18
MAX_KEYWORD_CHARS = 255
MAX_LOGINS = 64
MAX_LABEL_CHARS = 255
MAX_LOGIN_CHARS = 1024  # username and password together
# Answers: bounds that keep a broken daemon from making the client hold without limit.
MAX_TEXT_CHARS = 64 * 1024
MAX_ITEMS = 1_000_000


def decode_body(data: bytes) -> Any:
    """A request body as JSON; ValueError when too large, too deep or not JSON."""
    if len(data) > MAX_BODY_BYTES:
        raise ValueError(f"the request body is over {MAX_BODY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the request body is not UTF-8 text") from None
    if _nesting(text) > MAX_BODY_DEPTH:
        raise ValueError(f"the request body nests deeper than {MAX_BODY_DEPTH} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"the request body is not JSON ({err})") from None


def _nesting(text: str) -> int:
    """How deep arrays and objects nest in JSON `text` (brackets inside strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_BODY_DEPTH:
                    break  # deep enough to refuse: the rest need not be read
        elif char in "]}":
            depth -= 1
    return deepest


def line(record: Mapping[str, Any]) -> bytes:
    """One record of an NDJSON stream."""
    return json.dumps(record, default=str).encode() + b"\n"


# --- checks: each names the field it refuses -------------------------------------------


def _obj(value: Any, name: str, max_items: int = MAX_ITEMS) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object")
    if len(value) > max_items:
        raise ValueError(f"{name} has more than {max_items} entries")
    return value


def _list(value: Any, name: str, max_items: int = MAX_ITEMS) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list")
    if len(value) > max_items:
        raise ValueError(f"{name} has more than {max_items} items")
    return value


def _str(value: Any, name: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    if len(value) > max_chars:
        raise ValueError(f"{name} is longer than {max_chars} characters")
    return value


def _opt_str(value: Any, name: str, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    return None if value is None else _str(value, name, max_chars)


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    if abs(value) >= 2**63:
        raise ValueError(f"{name} is out of range")
    return value


def _opt_int(value: Any, name: str) -> int | None:
    return None if value is None else _int(value, name)


def _number(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number")
    return float(value)


def _key(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise ValueError(f"{where}{key} is missing")
    return obj[key]


def query_int(raw: str | None, name: str, default: int) -> int:
    """A non-negative integer from a query string (bounded in digits)."""
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_QUERY_DIGITS:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise ValueError(
            f"{name} must be a non-negative integer of at most {MAX_QUERY_DIGITS} digits, "
            f"not {shown!r}"
        )
    return int(raw)


# --- GET /v1/status --------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who asked, as the kernel vouches for it."""

    unix_user: str
    walt_user: str
    uid: int

    @classmethod
    def from_json(cls, obj: Any, where: str = "caller.") -> Caller:
        """From its JSON form; ValueError naming a bad field."""
        obj = _obj(obj, where.rstrip("."))
        return cls(
            _str(_key(obj, "unix_user", where), f"{where}unix_user", 256),
            _str(_key(obj, "walt_user", where), f"{where}walt_user", 256),
            _int(_key(obj, "uid", where), f"{where}uid"),
        )


@dataclass(frozen=True)
class ServiceState:
    """A supervised service as `walt status` shows it."""

    name: str
    state: str
    restarts: int
    last_error: str | None

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ServiceState:
        """From its JSON form; ValueError naming a bad field."""
        obj = _obj(obj, where.rstrip("."))
        return cls(
            _str(_key(obj, "name", where), f"{where}name", 256),
            _str(_key(obj, "state", where), f"{where}state", 256),
            _int(_key(obj, "restarts", where), f"{where}restarts"),
            _opt_str(obj.get("last_error"), f"{where}last_error"),
        )


@dataclass(frozen=True)
class RegistryInfo:
    """A configured registry: its label, API and authentication."""

    label: str
    api: str
    auth: str

    @classmethod
    def from_json(cls, obj: Any, where: str) -> RegistryInfo:
        """From its JSON form; ValueError naming a bad field."""
        obj = _obj(obj, where.rstrip("."))
        return cls(
            _str(_key(obj, "label", where), f"{where}label", MAX_LABEL_CHARS),
            _str(_key(obj, "api", where), f"{where}api", 256),
            _str(_key(obj, "auth", where), f"{where}auth", 256),
        )


@dataclass(frozen=True)
class Status:
    """GET /v1/status: the daemon, its services, and who is asking."""

    version: str
    pid: int
    uptime_s: float
    caller: Caller
    services: tuple[ServiceState, ...]
    node_network: str | None
    registries: tuple[RegistryInfo, ...]
    nodes: int | None

    def to_json(self) -> dict[str, Any]:
        """The JSON form (also what `walt status --json` prints)."""
        return {
            "version": self.version,
            "pid": self.pid,
            "uptime_s": self.uptime_s,
            "caller": _fields(self.caller),
            "services": [_fields(s) for s in self.services],
            "node_network": self.node_network,
            "registries": [_fields(r) for r in self.registries],
            "nodes": self.nodes,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Status:
        """From its JSON form; ValueError naming a bad field."""
        obj = _obj(obj, "status")
        services = _list(_key(obj, "services", ""), "services", 1000)
        registries = _list(_key(obj, "registries", ""), "registries", 10_000)
        return cls(
            version=_str(_key(obj, "version", ""), "version", 256),
            pid=_int(_key(obj, "pid", ""), "pid"),
            uptime_s=_number(_key(obj, "uptime_s", ""), "uptime_s"),
            caller=Caller.from_json(_key(obj, "caller", "")),
            services=tuple(
                ServiceState.from_json(s, f"services[{i}].") for i, s in enumerate(services)
            ),
            node_network=_opt_str(obj.get("node_network"), "node_network", 256),
            registries=tuple(
                RegistryInfo.from_json(r, f"registries[{i}].") for i, r in enumerate(registries)
            ),
            nodes=_opt_int(obj.get("nodes"), "nodes"),
        )


def _fields(item: Caller | ServiceState | RegistryInfo) -> dict[str, Any]:
    return dict(item.__dict__)


# --- GET /v1/events --------------------------------------------------------------------


@dataclass(frozen=True)
class EventsQuery:
    """GET /v1/events: events numbered above `since`, the last `limit` of them (0: all),
    then, with `follow`, new ones as they come."""

    since: int = 0
    limit: int = 0
    follow: bool = False

    def __post_init__(self) -> None:
        for name in ("since", "limit"):
            value = getattr(self, name)
            if not 0 <= value < 10**MAX_QUERY_DIGITS:
                raise ValueError(
                    f"{name} must be a non-negative integer of at most {MAX_QUERY_DIGITS} "
                    f"digits, not {value}"
                )

    def to_query(self) -> str:
        """The query string, `?` included."""
        return f"?since={self.since}&limit={self.limit}" + ("&follow=1" if self.follow else "")

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> EventsQuery:
        """From a request's query parameters; ValueError naming a bad one."""
        return cls(
            since=query_int(query.get("since"), "since", 0),
            limit=query_int(query.get("limit"), "limit", 0),
            follow=query.get("follow") in ("1", "true", "yes"),
        )


# --- POST /v1/images/search ------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    """A registry login sent with one request. The password is kept out of repr."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class SearchRequest:
    """POST /v1/images/search: a keyword (None: every image) and the caller's logins by
    registry label, for this request only."""

    keyword: str | None = None
    logins: Mapping[str, Login] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The request body."""
        creds = {
            k: {"username": v.username, "password": v.password} for k, v in self.logins.items()
        }
        return {"keyword": self.keyword, "credentials": creds}

    @classmethod
    def from_json(cls, obj: Any) -> SearchRequest:
        """From a decoded body; ValueError naming a bad field (never a password)."""
        obj = _obj(obj, "the request body")
        keyword = _opt_str(obj.get("keyword"), "keyword", MAX_KEYWORD_CHARS)
        raw = obj.get("credentials")
        logins: dict[str, Login] = {}
        if raw is not None:
            for label, value in _obj(raw, "credentials", MAX_LOGINS).items():
                where = f"credentials.{_shown(label)}"
                _str(label, f"{where} (the label)", MAX_LABEL_CHARS)
                entry = _obj(value, where, 2)
                username = _str(entry.get("username"), f"{where}.username", MAX_LOGIN_CHARS)
                password = _str(entry.get("password"), f"{where}.password", MAX_LOGIN_CHARS)
                if len(username) + len(password) > MAX_LOGIN_CHARS:
                    raise ValueError(
                        f"{where}: the login is longer than {MAX_LOGIN_CHARS} characters"
                    )
                logins[label] = Login(username, password)
        return cls(keyword, logins)


def _shown(label: str) -> str:
    return label[:40] if label.isprintable() else repr(label[:40])


@dataclass(frozen=True)
class SearchProgress:
    """One source answered ("done", with its count) or failed ("failed")."""

    source: str
    status: str
    count: int | None

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {
            "type": "progress",
            "source": self.source,
            "status": self.status,
            "count": self.count,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SearchProgress:
        """From its record; ValueError naming a bad field."""
        return cls(
            _str(_key(obj, "source", ""), "source", MAX_LABEL_CHARS),
            _str(_key(obj, "status", ""), "status", 64),
            _opt_int(obj.get("count"), "count"),
        )


@dataclass(frozen=True)
class ImageRow:
    """An image a search found: what the table and `--json` show."""

    location: str
    kind: str
    user: str
    name: str
    tag: str
    digest: str | None
    labels: Mapping[str, str]
    created: str | None
    platforms: tuple[str, ...]
    clone_url: str
    models: tuple[str, ...]  # from the models label, entries not named like a model left out
    minversion: int | None  # the server version the image needs, when it says

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "location": self.location,
            "kind": self.kind,
            "user": self.user,
            "name": self.name,
            "tag": self.tag,
            "digest": self.digest,
            "labels": dict(self.labels),
            "created": self.created,
            "platforms": list(self.platforms),
            "clone_url": self.clone_url,
            "models": list(self.models),
            "minversion": self.minversion,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ImageRow:
        """From its JSON form; ValueError naming a bad field."""
        obj = _obj(obj, where.rstrip("."))
        labels = _obj(_key(obj, "labels", where), f"{where}labels", 10_000)
        for key, value in labels.items():
            _str(value, f"{where}labels.{_shown(key)}")
        platforms = _list(obj.get("platforms", []), f"{where}platforms", 1000)
        models = _list(obj.get("models", []), f"{where}models", 1000)
        return cls(
            location=_str(_key(obj, "location", where), f"{where}location"),
            kind=_str(_key(obj, "kind", where), f"{where}kind"),
            user=_str(_key(obj, "user", where), f"{where}user"),
            name=_str(_key(obj, "name", where), f"{where}name"),
            tag=_str(_key(obj, "tag", where), f"{where}tag"),
            digest=_opt_str(obj.get("digest"), f"{where}digest"),
            labels=labels,
            created=_opt_str(obj.get("created"), f"{where}created"),
            platforms=tuple(_str(p, f"{where}platforms[{i}]") for i, p in enumerate(platforms)),
            clone_url=_str(_key(obj, "clone_url", where), f"{where}clone_url"),
            models=tuple(_str(m, f"{where}models[{i}]") for i, m in enumerate(models)),
            minversion=_opt_int(obj.get("minversion"), f"{where}minversion"),
        )


@dataclass(frozen=True)
class SearchResult:
    """The end of a search: the images found, and one warning line per failed source."""

    server_version: int
    images: tuple[ImageRow, ...]
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {
            "type": "result",
            "server_version": self.server_version,
            "images": [i.to_json() for i in self.images],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SearchResult:
        """From its record; ValueError naming a bad field."""
        images = _list(_key(obj, "images", ""), "images")
        warnings = _list(_key(obj, "warnings", ""), "warnings", 10_000)
        return cls(
            server_version=_int(_key(obj, "server_version", ""), "server_version"),
            images=tuple(ImageRow.from_json(i, f"images[{n}].") for n, i in enumerate(images)),
            warnings=tuple(_str(w, f"warnings[{n}]") for n, w in enumerate(warnings)),
        )


def search_record(obj: Any) -> SearchProgress | SearchResult:
    """A record of the search stream; ValueError for an unknown or broken one."""
    obj = _obj(obj, "a search record")
    kind = obj.get("type")
    if kind == "progress":
        return SearchProgress.from_json(obj)
    if kind == "result":
        return SearchResult.from_json(obj)
    raise ValueError(f"a search record of unknown type {str(kind)[:40]!r}")
