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
from urllib.parse import urlencode

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
        return {"keyword": self.keyword, "credentials": logins_to_json(self.logins)}

    @classmethod
    def from_json(cls, obj: Any) -> SearchRequest:
        """From a decoded body; ValueError naming a bad field (never a password)."""
        obj = _obj(obj, "the request body")
        keyword = _opt_str(obj.get("keyword"), "keyword", MAX_KEYWORD_CHARS)
        return cls(keyword, logins_from_json(obj.get("credentials")))


def logins_to_json(logins: Mapping[str, Login]) -> dict[str, Any]:
    """The `credentials` object of a request."""
    return {k: {"username": v.username, "password": v.password} for k, v in logins.items()}


def logins_from_json(raw: Any) -> dict[str, Login]:
    """The `credentials` object of a request (None: no login); ValueError naming a bad field
    (never a password)."""
    logins: dict[str, Login] = {}
    if raw is None:
        return logins
    for label, value in _obj(raw, "credentials", MAX_LOGINS).items():
        where = f"credentials.{_shown(label)}"
        _str(label, f"{where} (the label)", MAX_LABEL_CHARS)
        entry = _obj(value, where, 2)
        username = _str(entry.get("username"), f"{where}.username", MAX_LOGIN_CHARS)
        password = _str(entry.get("password"), f"{where}.password", MAX_LOGIN_CHARS)
        if len(username) + len(password) > MAX_LOGIN_CHARS:
            raise ValueError(f"{where}: the login is longer than {MAX_LOGIN_CHARS} characters")
        logins[label] = Login(username, password)
    return logins


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


# --- POST /v1/images/build -------------------------------------------------------------

# A build context (the tar of a folder) the daemon accepts, and `walt` sends.
MAX_BUILD_CONTEXT_BYTES = 2 * 1024**3
# One line of build output as sent; a longer one is cut (a RUN step may print anything).
MAX_BUILD_LINE_CHARS = 4096


@dataclass(frozen=True)
class BuildRequest:
    """POST /v1/images/build?name=..[&url=..[&sub_dir=..]][&force=1]: build image `name`
    (the caller's) from the git repository `url` (a folder `sub_dir` inside it), or, without
    `url`, from the tar of a build context sent as the body (Content-Type
    application/x-tar); `force`: even over an image nodes use."""

    name: str
    url: str | None = None
    sub_dir: str | None = None
    force: bool = False

    def to_params(self) -> dict[str, str]:
        """The query parameters."""
        params = {"name": self.name}
        if self.url is not None:
            params["url"] = self.url
        if self.sub_dir is not None:
            params["sub_dir"] = self.sub_dir
        if self.force:
            params["force"] = "1"
        return params

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> BuildRequest:
        """From a request's query parameters; ValueError naming a bad one."""
        name = query.get("name")
        if name is None:
            raise ValueError("name is missing")
        url = query.get("url")
        sub_dir = query.get("sub_dir")
        if sub_dir is not None and url is None:
            raise ValueError("sub_dir goes with url only")
        return cls(
            _str(name, "name", 512),
            _opt_str(url, "url", 4096),
            _opt_str(sub_dir, "sub_dir", 4096),
            query.get("force") in ("1", "true", "yes"),
        )


@dataclass(frozen=True)
class BuildProgress:
    """One line of the build's output (buildah's steps and what RUN steps print)."""

    line: str

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {"type": "progress", "line": self.line}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> BuildProgress:
        """From its record; ValueError naming a bad field."""
        return cls(_str(_key(obj, "line", ""), "line", MAX_BUILD_LINE_CHARS))


@dataclass(frozen=True)
class BuildResult:
    """The end of a successful build: the image as its owner names it."""

    image: str
    id: str
    models: tuple[str, ...]
    replaced: bool  # an image of that name was there before

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {
            "type": "result",
            "image": self.image,
            "id": self.id,
            "models": list(self.models),
            "replaced": self.replaced,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> BuildResult:
        """From its record; ValueError naming a bad field."""
        models = _list(_key(obj, "models", ""), "models", 1000)
        replaced = _key(obj, "replaced", "")
        if not isinstance(replaced, bool):
            raise ValueError("replaced must be true or false")
        return cls(
            image=_str(_key(obj, "image", ""), "image", 512),
            id=_str(_key(obj, "id", ""), "id", 256),
            models=tuple(_str(m, f"models[{i}]", 256) for i, m in enumerate(models)),
            replaced=replaced,
        )


@dataclass(frozen=True)
class BuildFailed:
    """The end of a failed build: why (a tool's own words included)."""

    error: str

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {"type": "error", "error": self.error}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> BuildFailed:
        """From its record; ValueError naming a bad field."""
        return cls(_str(_key(obj, "error", ""), "error"))


def build_record(obj: Any) -> BuildProgress | BuildResult | BuildFailed:
    """A record of the build stream; ValueError for an unknown or broken one."""
    obj = _obj(obj, "a build record")
    kind = obj.get("type")
    if kind == "progress":
        return BuildProgress.from_json(obj)
    if kind == "result":
        return BuildResult.from_json(obj)
    if kind == "error":
        return BuildFailed.from_json(obj)
    raise ValueError(f"a build record of unknown type {str(kind)[:40]!r}")


# --- POST /v1/images/clone and /v1/images/publish ---------------------------------------
# Both stream NDJSON: `CopyProgress` records, then one `CloneResult`/`PublishResult` record or
# an error record `{"type": "error", "error": "..."}`.

MAX_URL_CHARS = 1024
MAX_NAME_CHARS = 512


@dataclass(frozen=True)
class CloneRequest:
    """POST /v1/images/clone: copy the image of clone URL `url` into the caller's images as
    `name` (None: the URL's image name and tag); `force` replaces an image of that name."""

    url: str
    name: str | None = None
    force: bool = False
    logins: Mapping[str, Login] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The request body."""
        return {
            "url": self.url,
            "name": self.name,
            "force": self.force,
            "credentials": logins_to_json(self.logins),
        }

    @classmethod
    def from_json(cls, obj: Any) -> CloneRequest:
        """From a decoded body; ValueError naming a bad field (never a password)."""
        obj = _obj(obj, "the request body")
        force = obj.get("force", False)
        if not isinstance(force, bool):
            raise ValueError("force must be true or false")
        return cls(
            url=_str(_key(obj, "url", ""), "url", MAX_URL_CHARS),
            name=_opt_str(obj.get("name"), "name", MAX_NAME_CHARS),
            force=force,
            logins=logins_from_json(obj.get("credentials")),
        )


@dataclass(frozen=True)
class PublishRequest:
    """POST /v1/images/publish: push the caller's image `image` to the registry `registry`
    (None: the only configured one)."""

    image: str
    registry: str | None = None
    logins: Mapping[str, Login] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The request body."""
        return {
            "image": self.image,
            "registry": self.registry,
            "credentials": logins_to_json(self.logins),
        }

    @classmethod
    def from_json(cls, obj: Any) -> PublishRequest:
        """From a decoded body; ValueError naming a bad field (never a password)."""
        obj = _obj(obj, "the request body")
        return cls(
            image=_str(_key(obj, "image", ""), "image", MAX_NAME_CHARS),
            registry=_opt_str(obj.get("registry"), "registry", MAX_LABEL_CHARS),
            logins=logins_from_json(obj.get("credentials")),
        )


@dataclass(frozen=True)
class CopyProgress:
    """One step of an image copy: a blob (layer), the config or the manifest, in state
    `copying`, `done` or `skipped` (already held), with bytes when known."""

    step: str
    id: str
    state: str
    done: int | None = None
    total: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {
            "type": "progress",
            "step": self.step,
            "id": self.id,
            "state": self.state,
            "done": self.done,
            "total": self.total,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CopyProgress:
        """From its record; ValueError naming a bad field."""
        return cls(
            _str(_key(obj, "step", ""), "step", 64),
            _str(_key(obj, "id", ""), "id", 128),
            _str(_key(obj, "state", ""), "state", 64),
            _opt_int(obj.get("done"), "done"),
            _opt_int(obj.get("total"), "total"),
        )


@dataclass(frozen=True)
class CloneResult:
    """A clone done: the caller's image `image` (`name[:tag]`), its id and node models."""

    image: str
    url: str
    id: str
    models: tuple[str, ...]
    replaced: bool

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {
            "type": "result",
            "image": self.image,
            "url": self.url,
            "id": self.id,
            "models": list(self.models),
            "replaced": self.replaced,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CloneResult:
        """From its record; ValueError naming a bad field."""
        models = _list(_key(obj, "models", ""), "models", 1000)
        replaced = obj.get("replaced", False)
        return cls(
            image=_str(_key(obj, "image", ""), "image", MAX_NAME_CHARS),
            url=_str(_key(obj, "url", ""), "url", MAX_URL_CHARS),
            id=_str(_key(obj, "id", ""), "id", 256),
            models=tuple(_str(m, f"models[{i}]", 256) for i, m in enumerate(models)),
            replaced=replaced is True,
        )


@dataclass(frozen=True)
class PublishResult:
    """A publish done: the clone URL of the published image and its registry reference."""

    url: str
    reference: str

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {"type": "result", "url": self.url, "reference": self.reference}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PublishResult:
        """From its record; ValueError naming a bad field."""
        return cls(
            _str(_key(obj, "url", ""), "url", MAX_URL_CHARS),
            _str(_key(obj, "reference", ""), "reference", MAX_URL_CHARS),
        )


@dataclass(frozen=True)
class OperationError:
    """An operation refused or failed: one message for the user."""

    error: str

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {"type": "error", "error": self.error}


def transfer_record(
    obj: Any, result: type[CloneResult] | type[PublishResult]
) -> CopyProgress | CloneResult | PublishResult | OperationError:
    """A record of a clone or publish stream (`result`: the kind of its result record);
    ValueError for an unknown or broken one."""
    obj = _obj(obj, "a record")
    kind = obj.get("type")
    if kind == "progress":
        return CopyProgress.from_json(obj)
    if kind == "result":
        return result.from_json(obj)
    if kind == "error":
        return OperationError(_str(_key(obj, "error", ""), "error"))
    raise ValueError(f"a record of unknown type {str(kind)[:40]!r}")


# --- GET /v1/images, POST /v1/images/{rename,duplicate,remove,squash} --------------------
# GET /v1/images?all=1 answers an `ImageListing` (JSON). The four operations take an
# `ImageOperation` body and stream NDJSON: `OperationStep` records, then one
# `OperationResult` record or an `OperationError` record.

MAX_STORED_IMAGES = 100_000
MAX_NODES = 100_000


@dataclass(frozen=True)
class StoredImageRow:
    """An image of the internal repository as `walt image show` lists it."""

    user: str
    name: str
    tag: str
    id: str
    created: str | None
    size: int
    layers: int
    models: tuple[str, ...]
    nodes: tuple[str, ...]  # the nodes using it
    mine: bool  # the caller's own
    default: bool  # the default image of a node model (waltplatform/<model>-default)
    clone_url: str  # walt:<user>/<name>[:<tag>]

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {**self.__dict__, "models": list(self.models), "nodes": list(self.nodes)}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> StoredImageRow:
        """From its JSON form; ValueError naming a bad field."""
        obj = _obj(obj, where.rstrip("."))
        models = _list(_key(obj, "models", where), f"{where}models", 1000)
        nodes = _list(_key(obj, "nodes", where), f"{where}nodes", MAX_NODES)
        flags = {}
        for flag in ("mine", "default"):
            value = _key(obj, flag, where)
            if not isinstance(value, bool):
                raise ValueError(f"{where}{flag} must be true or false")
            flags[flag] = value
        return cls(
            user=_str(_key(obj, "user", where), f"{where}user", MAX_NAME_CHARS),
            name=_str(_key(obj, "name", where), f"{where}name", MAX_NAME_CHARS),
            tag=_str(_key(obj, "tag", where), f"{where}tag", MAX_NAME_CHARS),
            id=_str(_key(obj, "id", where), f"{where}id", 256),
            created=_opt_str(obj.get("created"), f"{where}created", 256),
            size=_int(_key(obj, "size", where), f"{where}size"),
            layers=_int(_key(obj, "layers", where), f"{where}layers"),
            models=tuple(_str(m, f"{where}models[{i}]", 256) for i, m in enumerate(models)),
            nodes=tuple(_str(n, f"{where}nodes[{i}]", 256) for i, n in enumerate(nodes)),
            mine=flags["mine"],
            default=flags["default"],
            clone_url=_str(_key(obj, "clone_url", where), f"{where}clone_url", MAX_URL_CHARS),
        )


@dataclass(frozen=True)
class ImageListing:
    """GET /v1/images[?all=1]: the caller's images (with all: every image)."""

    images: tuple[StoredImageRow, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON form (what `walt image show --json` prints)."""
        return {"images": [i.to_json() for i in self.images]}

    @classmethod
    def from_json(cls, obj: Any) -> ImageListing:
        """From its JSON form; ValueError naming a bad field."""
        obj = _obj(obj, "the image listing")
        images = _list(_key(obj, "images", ""), "images", MAX_STORED_IMAGES)
        return cls(
            tuple(StoredImageRow.from_json(i, f"images[{n}].") for n, i in enumerate(images))
        )


@dataclass(frozen=True)
class ImageOperation:
    """POST /v1/images/{rename,duplicate,remove,squash}: the image `image` as the caller
    writes it (`name[:tag]` for their own, `user/name[:tag]` for another's), the new name
    (rename, duplicate), and whether to replace or remove an image in use (`force`)."""

    image: str
    new: str | None = None
    force: bool = False

    def to_json(self) -> dict[str, Any]:
        """The request body."""
        return {"image": self.image, "new": self.new, "force": self.force}

    @classmethod
    def from_json(cls, obj: Any) -> ImageOperation:
        """From a decoded body; ValueError naming a bad field."""
        obj = _obj(obj, "the request body")
        force = obj.get("force", False)
        if not isinstance(force, bool):
            raise ValueError("force must be true or false")
        return cls(
            image=_str(_key(obj, "image", ""), "image", MAX_NAME_CHARS),
            new=_opt_str(obj.get("new"), "new", MAX_NAME_CHARS),
            force=force,
        )


@dataclass(frozen=True)
class OperationStep:
    """A step of a running operation, one line for the user."""

    step: str

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {"type": "progress", "step": self.step}


@dataclass(frozen=True)
class OperationResult:
    """An operation done: the image it leaves (None after a removal: the one removed), its
    id and layer count, the nodes it changed, and one line for the user."""

    image: str
    id: str | None
    layers: int | None
    nodes: tuple[str, ...]
    message: str

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {"type": "result", **self.__dict__, "nodes": list(self.nodes)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> OperationResult:
        """From its record; ValueError naming a bad field."""
        nodes = _list(_key(obj, "nodes", ""), "nodes", MAX_NODES)
        return cls(
            image=_str(_key(obj, "image", ""), "image", MAX_NAME_CHARS),
            id=_opt_str(obj.get("id"), "id", 256),
            layers=_opt_int(obj.get("layers"), "layers"),
            nodes=tuple(_str(n, f"nodes[{i}]", 256) for i, n in enumerate(nodes)),
            message=_str(_key(obj, "message", ""), "message"),
        )


def operation_record(obj: Any) -> OperationStep | OperationResult | OperationError:
    """A record of a rename, duplicate, remove or squash stream; ValueError for an unknown or
    broken one."""
    obj = _obj(obj, "a record")
    kind = obj.get("type")
    if kind == "progress":
        return OperationStep(_str(_key(obj, "step", ""), "step"))
    if kind == "result":
        return OperationResult.from_json(obj)
    if kind == "error":
        return OperationError(_str(_key(obj, "error", ""), "error"))
    raise ValueError(f"a record of unknown type {str(kind)[:40]!r}")


# --- GET /v1/nodes ---------------------------------------------------------------------
# GET /v1/nodes answers a `NodeListing` (JSON): what `walt node show` draws.

MAX_NODE_TEXT_CHARS = 256  # a node's name, MAC, model, state or IP
MAX_ERROR_CHARS = 4096  # a model's last fetch error as sent (the daemon shortens a longer one)
# Seconds since the epoch: 9999-12-31 23:59:59 UTC is the last time a calendar shows.
MAX_TIMESTAMP = 253_402_300_799.0


def _timestamp(value: Any, name: str) -> float:
    number = _number(value, name)
    # json.loads reads NaN and Infinity, which no clock shows
    if not 0 <= number <= MAX_TIMESTAMP:
        raise ValueError(f"{name} must be a time between 0 and {MAX_TIMESTAMP:.0f}")
    return number


@dataclass(frozen=True)
class NodeRow:
    """A node, or a device of no known model (`model` None), as `walt node show` lists it."""

    name: str
    mac: str
    model: str | None
    image: str | None  # `user/name[:tag]` as users write it; None: no image yet
    state: str
    ip: str | None
    first_seen: float
    last_seen: float

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, obj: Any, where: str) -> NodeRow:
        """From its JSON form; ValueError naming a bad field."""
        obj = _obj(obj, where.rstrip("."), 100)
        text = MAX_NODE_TEXT_CHARS
        return cls(
            name=_str(_key(obj, "name", where), f"{where}name", text),
            mac=_str(_key(obj, "mac", where), f"{where}mac", text),
            model=_opt_str(obj.get("model"), f"{where}model", text),
            image=_opt_str(obj.get("image"), f"{where}image", MAX_NAME_CHARS),
            state=_str(_key(obj, "state", where), f"{where}state", text),
            ip=_opt_str(obj.get("ip"), f"{where}ip", text),
            first_seen=_timestamp(_key(obj, "first_seen", where), f"{where}first_seen"),
            last_seen=_timestamp(_key(obj, "last_seen", where), f"{where}last_seen"),
        )


@dataclass(frozen=True)
class ModelRow:
    """Where a node model's default image stands: its name as users write it, its status
    (missing, fetching, failed, ready), the last fetch error and when the next try comes."""

    model: str
    image: str
    status: str
    last_error: str | None
    next_retry: float | None

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ModelRow:
        """From its JSON form; ValueError naming a bad field."""
        obj = _obj(obj, where.rstrip("."), 100)
        retry = obj.get("next_retry")
        return cls(
            model=_str(_key(obj, "model", where), f"{where}model", MAX_NODE_TEXT_CHARS),
            image=_str(_key(obj, "image", where), f"{where}image", MAX_NAME_CHARS),
            status=_str(_key(obj, "status", where), f"{where}status", MAX_NODE_TEXT_CHARS),
            last_error=_opt_str(obj.get("last_error"), f"{where}last_error", MAX_ERROR_CHARS),
            next_retry=None if retry is None else _timestamp(retry, f"{where}next_retry"),
        )


@dataclass(frozen=True)
class NodeListing:
    """GET /v1/nodes: the nodes (a model known), the devices of no known model, and each
    model's default image. Each list holds at most `MAX_NODES` entries (nodes and devices the
    most recently seen); `omitted` counts the entries left out past that."""

    nodes: tuple[NodeRow, ...]
    devices: tuple[NodeRow, ...]
    models: tuple[ModelRow, ...]
    omitted: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON form (what `walt node show --json` prints)."""
        return {
            "nodes": [n.to_json() for n in self.nodes],
            "devices": [d.to_json() for d in self.devices],
            "models": [m.to_json() for m in self.models],
            "omitted": self.omitted,
        }

    @classmethod
    def from_json(cls, obj: Any) -> NodeListing:
        """From its JSON form; ValueError naming a bad field."""
        obj = _obj(obj, "the node listing")
        nodes = _list(_key(obj, "nodes", ""), "nodes", MAX_NODES)
        devices = _list(_key(obj, "devices", ""), "devices", MAX_NODES)
        models = _list(_key(obj, "models", ""), "models", MAX_NODES)
        omitted = _int(obj.get("omitted", 0), "omitted")
        if omitted < 0:
            raise ValueError("omitted must not be negative")
        return cls(
            nodes=tuple(NodeRow.from_json(n, f"nodes[{i}].") for i, n in enumerate(nodes)),
            devices=tuple(NodeRow.from_json(d, f"devices[{i}].") for i, d in enumerate(devices)),
            models=tuple(ModelRow.from_json(m, f"models[{i}].") for i, m in enumerate(models)),
            omitted=omitted,
        )


# --- virtual nodes: POST /v1/nodes/{create,remove}, GET /v1/nodes/console ----------------
# create and remove take a `VNodeRequest` body and stream NDJSON: one `VNodeResult` record
# or an `OperationError` record. The console streams `ConsoleLine` records (the lines kept,
# then, with `follow`, new ones), a `ConsoleDropped` record where a slow reader lost lines.

MAX_CONSOLE_LINE_CHARS = 4096  # the daemon cuts its lines at 1024


@dataclass(frozen=True)
class VNodeRequest:
    """POST /v1/nodes/create or /v1/nodes/remove: the virtual node's name (the daemon
    checks its grammar)."""

    name: str

    def to_json(self) -> dict[str, Any]:
        """The request body."""
        return {"name": self.name}

    @classmethod
    def from_json(cls, obj: Any) -> VNodeRequest:
        """From a decoded body; ValueError naming a bad field."""
        obj = _obj(obj, "the request body", 8)
        return cls(_str(_key(obj, "name", ""), "name", MAX_NODE_TEXT_CHARS))


@dataclass(frozen=True)
class VNodeResult:
    """A virtual node created or removed: its name, MAC, and one line for the user."""

    name: str
    mac: str
    message: str

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {"type": "result", **self.__dict__}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> VNodeResult:
        """From its record; ValueError naming a bad field."""
        return cls(
            name=_str(_key(obj, "name", ""), "name", MAX_NODE_TEXT_CHARS),
            mac=_str(_key(obj, "mac", ""), "mac", MAX_NODE_TEXT_CHARS),
            message=_str(_key(obj, "message", ""), "message"),
        )


def vnode_record(obj: Any) -> VNodeResult | OperationError:
    """A record of a create or remove stream; ValueError for an unknown or broken one."""
    obj = _obj(obj, "a record")
    kind = obj.get("type")
    if kind == "result":
        return VNodeResult.from_json(obj)
    if kind == "error":
        return OperationError(_str(_key(obj, "error", ""), "error"))
    raise ValueError(f"a record of unknown type {str(kind)[:40]!r}")


@dataclass(frozen=True)
class ConsoleQuery:
    """GET /v1/nodes/console: virtual node `name`'s console lines, then, with `follow`, new
    ones as they come."""

    name: str
    follow: bool = False

    def to_query(self) -> str:
        """The query string, `?` included (the name URL-encoded)."""
        return "?" + urlencode({"name": self.name, **({"follow": "1"} if self.follow else {})})

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ConsoleQuery:
        """From a request's query parameters; ValueError naming a bad one."""
        name = query.get("name")
        if not name:
            raise ValueError("name is missing")
        return cls(
            name=_str(name, "name", MAX_NODE_TEXT_CHARS),
            follow=query.get("follow") in ("1", "true", "yes"),
        )


@dataclass(frozen=True)
class ConsoleLine:
    """A console line, numbered in its console's life (a gap: lines the ring let go)."""

    seq: int
    line: str

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {"type": "line", "seq": self.seq, "line": self.line}


@dataclass(frozen=True)
class ConsoleDropped:
    """The reader was too slow: `count` lines were not sent to it."""

    count: int

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {"type": "dropped", "count": self.count}


def console_record(obj: Any) -> ConsoleLine | ConsoleDropped | OperationError:
    """A record of a console stream; ValueError for an unknown or broken one."""
    obj = _obj(obj, "a record")
    kind = obj.get("type")
    if kind == "line":
        return ConsoleLine(
            _int(_key(obj, "seq", ""), "seq"),
            _str(_key(obj, "line", ""), "line", MAX_CONSOLE_LINE_CHARS),
        )
    if kind == "dropped":
        return ConsoleDropped(_int(_key(obj, "count", ""), "count"))
    if kind == "error":
        return OperationError(_str(_key(obj, "error", ""), "error"))
    raise ValueError(f"a record of unknown type {str(kind)[:40]!r}")


# ---- walt node boot -------------------------------------------------------------------------

MAX_BOOT_NODES = 1000  # named in one `walt node boot`


@dataclass(frozen=True)
class NodeBootRequest:
    """POST /v1/nodes/boot: give `nodes` (names) the image `image` (`[user/]name[:tag]`, or
    `default`: each node's model's default image)."""

    nodes: tuple[str, ...]
    image: str

    def to_json(self) -> dict[str, Any]:
        """The request body."""
        return {"nodes": list(self.nodes), "image": self.image}

    @classmethod
    def from_json(cls, obj: Any) -> NodeBootRequest:
        """From a decoded body; ValueError naming a bad field."""
        obj = _obj(obj, "the request body", 8)
        listed = _list(_key(obj, "nodes", ""), "nodes", MAX_BOOT_NODES)
        names = tuple(
            _str(name, f"nodes[{i}]", MAX_NODE_TEXT_CHARS) for i, name in enumerate(listed)
        )
        return cls(names, _str(_key(obj, "image", ""), "image", MAX_NAME_CHARS))


@dataclass(frozen=True)
class NodeBooting:
    """One node given its new image, and what happens next: `reset` (a virtual node, reset
    now) or `reboot` (the node boots it when it boots next)."""

    name: str
    image: str
    action: str

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {"type": "node", **self.__dict__}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> NodeBooting:
        """From a record; ValueError naming a bad field."""
        return cls(
            _str(_key(obj, "name", ""), "name", MAX_NODE_TEXT_CHARS),
            _str(_key(obj, "image", ""), "image", MAX_NAME_CHARS),
            _str(_key(obj, "action", ""), "action", MAX_NODE_TEXT_CHARS),
        )


@dataclass(frozen=True)
class NodesBooted:
    """The end of a `walt node boot` stream: how many nodes were given the image."""

    count: int

    def to_json(self) -> dict[str, Any]:
        """The NDJSON record."""
        return {"type": "result", "count": self.count}


def node_boot_record(obj: Any) -> NodeBooting | NodesBooted | OperationError:
    """A record of a `walt node boot` stream: one per node, then the result; ValueError for
    an unknown or broken one."""
    obj = _obj(obj, "a record")
    kind = obj.get("type")
    if kind == "node":
        return NodeBooting.from_json(obj)
    if kind == "result":
        return NodesBooted(_int(_key(obj, "count", ""), "count"))
    if kind == "error":
        return OperationError(_str(_key(obj, "error", ""), "error"))
    raise ValueError(f"a record of unknown type {str(kind)[:40]!r}")
