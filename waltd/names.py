"""Names users see: walt users, local image names, Docker references and clone URLs.

Pure functions, no I/O. The grammars are WalT's (image names and clone URLs) and
Docker's reference grammar (github.com/distribution/reference). Names and URLs later reach
command lines as single arguments, so these grammars are also the guard against hostile text:
nothing they accept holds a space, a control or shell character or a leading '-', nor '..'
outside a tag (Docker allows "1..2" as a tag; a tag never starts with '.' nor holds '/').
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

DEFAULT_TAG = "latest"
RESERVED_NAME = "default"
# Docker refuses repository names (registry host included) longer than this.
NAME_TOTAL_MAX = 255
# Internal images are stored as docker.io/<user>/<name>: 128 leaves 116 characters for the user
# within NAME_TOTAL_MAX (Linux caps user names at 32).
LOCAL_NAME_MAX = 128
# A walt user is a Unix user name normalised, and Linux caps those at 32 characters.
WALT_USER_MAX = 32
TAG_MAX = 128
CLONE_LOCATIONS = ("walt", "hub", "docker")

_NOT_LOCAL = re.compile(r"[^a-z0-9]+")
# WalT's [a-z0-9-]+, but no '-' first or last: such a name is no Docker path component
# (podman would refuse docker.io/<user>/<name>) and a leading '-' reads as a command line option.
_LOCAL_NAME_RE = re.compile(r"[a-z0-9]+(?:-+[a-z0-9]+)*")
# WalT's [a-z0-9._-]{1,128}, but not '.' or '-' first, which Docker refuses in a tag.
_LOCAL_TAG_RE = re.compile(r"[a-z0-9_][a-z0-9._-]{0,127}")
# Docker's path component; its separator `[-]*` is written `-+` (same language) because the empty
# alternative makes the pattern backtrack exponentially on long invalid texts.
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_RE = re.compile(
    r"(?:[A-Za-z0-9]+(?:-+[A-Za-z0-9]+)*(?:\.[A-Za-z0-9]+(?:-+[A-Za-z0-9]+)*)*"
    r"|\[[A-Fa-f0-9:]+\])"
    r"(?::[0-9]+)?"
)
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
# podman's image ids: a config digest's 64 hex digits
_IMAGE_ID_RE = re.compile(r"[0-9a-f]{64}")
_LOCATION_RE = re.compile(r"[a-z0-9-]+")

_LOCAL_NAME_RULE = "use lower-case letters, digits and '-' (not first or last)"
_LOCAL_TAG_RULE = (
    f"use lower-case letters, digits, '.', '_' and '-' (not '.' or '-' first), "
    f"at most {TAG_MAX} characters"
)
_COMPONENT_RULE = "use lower-case letters and digits, separated by '.', '_', '__' or '-'"
_TAG_RULE = (
    f"use letters, digits, '_', '.' and '-' (not '.' or '-' first), at most {TAG_MAX} characters"
)
_CLONE_URL_SHAPE = (
    "a clone URL is <location>:<user>/<name>[:<tag>], e.g. hub:waltplatform/rpi-3-b-default"
)


class InvalidName(ValueError):
    """A name, reference or clone URL that breaks its grammar; the message says what and why."""


def _show(text: str) -> str:
    # repr escapes control characters; a long text is cut so the message stays readable.
    if len(text) <= 64:
        return repr(text)
    return f"{text[:48]!r}... ({len(text)} characters)"


def normalise_local(text: str) -> str:
    """`text` as a local name: lower case, every run of other characters becomes '-'.

    Leading and trailing dashes are dropped; a text with nothing usable gives "".
    """
    return _NOT_LOCAL.sub("-", text.lower()).strip("-")


def is_label(text: str) -> bool:
    """Whether `text` is a registry label, the location of a clone URL: [a-z0-9-]+."""
    return _LOCATION_RE.fullmatch(text) is not None


def is_path_component(text: str) -> bool:
    """Whether `text` is a Docker path component (a part of a repository name between '/')."""
    return _COMPONENT_RE.fullmatch(text) is not None


def host_port(host: str, port: int) -> str:
    """`host:port` as URLs and image references spell it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def walt_user(unix_user: str) -> str:
    """The walt user name of a Unix user: its name, normalised."""
    name = normalise_local(unix_user)
    if not name:
        raise ValueError(f"Unix user name {unix_user!r} gives no usable walt user name")
    return name


# Local names -------------------------------------------------------------------------------


def _local_name_problem(name: str) -> str | None:
    if not name:
        return f"invalid image name {_show(name)}: the name is empty; {_LOCAL_NAME_RULE}"
    if len(name) > LOCAL_NAME_MAX:
        return f"invalid image name {_show(name)}: at most {LOCAL_NAME_MAX} characters are allowed"
    if not _LOCAL_NAME_RE.fullmatch(name):
        return f"invalid image name {_show(name)}: {_LOCAL_NAME_RULE}"
    if name == RESERVED_NAME:
        return (
            f"invalid image name {name!r}: it is reserved for the default images of node models, "
            "choose another name"
        )
    return None


def parse_local(text: str) -> tuple[str, str]:
    """(name, tag) of a local image name `<name>[:<tag>]`; the tag defaults to `latest`.

    Raises InvalidName saying what is wrong and what is allowed.
    """
    name, colon, tag = text.partition(":")
    problem = _local_name_problem(name)
    if problem:
        raise InvalidName(problem)
    if not colon:
        return name, DEFAULT_TAG
    if ":" in tag:
        raise InvalidName(f"invalid image name {_show(text)}: at most one ':tag' is allowed")
    if not _LOCAL_TAG_RE.fullmatch(tag):
        raise InvalidName(
            f"invalid tag {_show(tag)} in image name {_show(text)}: {_LOCAL_TAG_RULE}"
        )
    return name, tag


def parse_owned_local(text: str, default_user: str) -> tuple[str, str, str]:
    """(user, name, tag) of `[<user>/]<name>[:<tag>]`, the user defaulting to `default_user`.

    The user is a walt user name (as `walt_user` makes them); raises InvalidName saying what
    is wrong and what is allowed.
    """
    user, slash, rest = text.partition("/")
    if not slash:
        user, rest = default_user, text
    elif ":" in user and _LOCATION_RE.fullmatch(user.partition(":")[0]):
        raise InvalidName(
            f"invalid image name {_show(text)}: a location ({_show(user.partition(':')[0])}) "
            "belongs in a clone URL (walt image clone); name an image of the server as "
            "<name>[:<tag>] (yours) or <user>/<name>[:<tag>]"
        )
    elif len(user) > WALT_USER_MAX:
        raise InvalidName(
            f"invalid user {_show(user)} in image name {_show(text)}: at most {WALT_USER_MAX} "
            "characters are allowed"
        )
    elif not user or not _LOCAL_NAME_RE.fullmatch(user):
        raise InvalidName(
            f"invalid user {_show(user)} in image name {_show(text)}: {_LOCAL_NAME_RULE}; "
            "write <name>[:<tag>] for your own images, <user>/<name>[:<tag>] for another's"
        )
    if "/" in rest:
        raise InvalidName(
            f"invalid image name {_show(text)}: at most one '/' is allowed (<user>/<name>[:<tag>])"
        )
    name, tag = parse_local(rest)
    return user, name, tag


def to_local(text: str) -> str:
    """`text` (typically a remote image name) made a local name, as normalise_local does.

    Raises InvalidName when nothing usable is left, or the result is reserved or too long.
    """
    name = normalise_local(text)
    if not name:
        raise InvalidName(
            f"{_show(text)} gives no usable image name: it holds no letter or digit; "
            "give a name explicitly"
        )
    problem = _local_name_problem(name)
    if problem:
        raise InvalidName(f"{_show(text)} gives an unusable local name; {problem}")
    return name


# Docker references -------------------------------------------------------------------------


def is_repository(text: str) -> bool:
    """Whether `text` is a Docker repository path: components joined by '/' (no domain)."""
    return all(is_path_component(part) for part in text.split("/"))


def is_tag(text: str) -> bool:
    """Whether `text` is a Docker tag."""
    return _TAG_RE.fullmatch(text) is not None


def split_user_name(text: object) -> tuple[str, str] | None:
    """`user/name` (exactly two path components) as (user, name); None for anything else."""
    if not isinstance(text, str):
        return None
    user, slash, name = text.partition("/")
    if not slash or not is_path_component(user) or not is_path_component(name):
        return None
    return user, name


def _component_problem(what: str, component: str) -> str | None:
    if not component:
        return f"{what} is empty"
    if _COMPONENT_RE.fullmatch(component):
        return None
    if _COMPONENT_RE.fullmatch(component.lower()):
        return f"{what} {_show(component)} must be lower case (Docker repository names are)"
    return f"{what} {_show(component)} is not allowed: {_COMPONENT_RULE}"


def _tag_problem(tag: str) -> str | None:
    if not tag:
        return "the tag after ':' is empty"
    if not _TAG_RE.fullmatch(tag):
        return f"tag {_show(tag)} is not allowed: {_TAG_RULE}"
    return None


def _looks_like_domain(component: str) -> bool:
    # Docker's rule (splitDockerDomain): only such a first component names a registry.
    return "." in component or ":" in component or component == "localhost"


def _reference_problem(
    domain: str | None, path: str, tag: str | None, digest: str | None
) -> str | None:
    name = path if domain is None else f"{domain}/{path}"
    if len(name) > NAME_TOTAL_MAX:
        return f"the name is {len(name)} characters long, at most {NAME_TOTAL_MAX} are allowed"
    if domain is not None and not _DOMAIN_RE.fullmatch(domain):
        return (
            f"registry {_show(domain)} is not allowed: use a host name, an IPv4 address or an "
            "[IPv6 address], optionally followed by :port"
        )
    if not path:
        return "the repository name is empty"
    components = path.split("/")
    if domain is None and len(components) > 1 and _looks_like_domain(components[0]):
        return f"{_show(components[0])} would read as a registry; give it as the domain"
    if "" in components:
        return "a path component is empty (check for '//' or a '/' first or last)"
    for component in components:
        problem = _component_problem("path component", component)
        if problem:
            return problem
    if tag is not None:
        problem = _tag_problem(tag)
        if problem:
            return problem
    if digest is not None and not _DIGEST_RE.fullmatch(digest):
        return f"digest {_show(digest)} is not allowed: use sha256:<64 lower-case hex digits>"
    return None


@dataclass(frozen=True)
class Reference:
    """A Docker image reference `[domain/]path[:tag][@digest]`; str() gives it back.

    `domain` is the registry `host[:port]` (None for Docker Hub); construction checks every field.
    """

    domain: str | None
    path: str
    tag: str | None
    digest: str | None

    def __post_init__(self) -> None:
        problem = _reference_problem(self.domain, self.path, self.tag, self.digest)
        if problem:
            raise InvalidName(f"invalid image reference {_show(str(self))}: {problem}")

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """The repository name: `[domain/]path`."""
        return self.path if self.domain is None else f"{self.domain}/{self.path}"

    @property
    def user(self) -> str | None:
        """The path's first component (a user on Docker Hub), None for a one-component path."""
        user, slash, _ = self.path.partition("/")
        return user if slash else None

    @property
    def repo(self) -> str | None:
        """The path after its first component, None for a one-component path."""
        _, slash, repo = self.path.partition("/")
        return repo if slash else None


def parse_reference(text: str) -> Reference:
    """`text` read with Docker's reference grammar (no normalisation: no docker.io, no tag added).

    Raises InvalidName naming the problem.
    """
    name, at, digest_text = text.partition("@")
    digest = digest_text if at else None
    # The tag follows the last ':' after the last '/'; an earlier ':' is the registry port.
    colon = name.rfind(":")
    tag = None
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
    first, slash, rest = name.partition("/")
    domain, path = (first, rest) if slash and _looks_like_domain(first) else (None, name)
    problem = _reference_problem(domain, path, tag, digest)
    if problem:
        raise InvalidName(f"invalid image reference {_show(text)}: {problem}")
    return Reference(domain, path, tag, digest)


def registry_reference(host: str | None, port: int | None, path: str, tag: str) -> str:
    """`host:port/path:tag` (parts omitted when None); an IPv6 host is put in brackets.

    `host` is a bare host name or IP address, as in server.conf. Raises InvalidName when the
    result is no valid Docker reference.
    """
    if host is None:
        if port is not None:
            raise InvalidName(f"port {port} given without a registry host")
        return str(Reference(None, path, tag, None))
    domain = f"[{host}]" if ":" in host else host
    if port is not None:
        domain += f":{port}"
    return str(Reference(domain, path, tag, None))


# Clone URLs --------------------------------------------------------------------------------


def _clone_url_problem(location: str, user: str, name: str, tag: str) -> str | None:
    if not _LOCATION_RE.fullmatch(location):
        return (
            f"location {_show(location)} is not allowed: use walt, hub, docker or a registry "
            "label (lower-case letters, digits and '-')"
        )
    if len(user) + 1 + len(name) > NAME_TOTAL_MAX:
        return (
            f"<user>/<name> is {len(user) + 1 + len(name)} characters long, "
            f"at most {NAME_TOTAL_MAX} are allowed"
        )
    if "/" in name:
        return f"image name {_show(name)} must not contain '/'"
    return (
        _component_problem("user", user)
        or _component_problem("image name", name)
        or _tag_problem(tag)
    )


@dataclass(frozen=True)
class CloneURL:
    """`<location>:<user>/<name>[:<tag>]`: where an image is and which one; str() shows it.

    user and name are Docker path components (lower case); the tag may hold upper case, as
    Docker allows. Construction checks every field but not that the location is configured.
    """

    location: str
    user: str
    name: str
    tag: str = DEFAULT_TAG

    def __post_init__(self) -> None:
        problem = _clone_url_problem(self.location, self.user, self.name, self.tag)
        if problem:
            raise InvalidName(f"invalid clone URL {_show(str(self))}: {problem}")

    def __str__(self) -> str:
        return format_clone_url(self)


def format_clone_url(url: CloneURL) -> str:
    """`<location>:<user>/<name>[:<tag>]`, a `:latest` tag not shown, as WalT prints them."""
    tag = "" if url.tag == DEFAULT_TAG else f":{url.tag}"
    return f"{url.location}:{url.user}/{url.name}{tag}"


def parse_clone_url(text: str, labels: Collection[str] = ()) -> CloneURL:
    """`text` as a clone URL whose location is walt, hub, docker or one of `labels`.

    The tag defaults to `latest`. Raises InvalidName naming the problem (for an unknown
    location: which locations are valid).
    """
    location, colon, rest = text.partition(":")
    user, slash, rest = rest.partition("/")
    if not colon or not slash:
        raise InvalidName(f"invalid clone URL {_show(text)}: {_CLONE_URL_SHAPE}")
    valid = dict.fromkeys(
        [*CLONE_LOCATIONS, *(label for label in sorted(labels) if _LOCATION_RE.fullmatch(label))]
    )
    if location not in valid:
        raise InvalidName(
            f"invalid clone URL {_show(text)}: unknown location {_show(location)}, "
            f"use one of {', '.join(valid)}"
        )
    name, colon, tag = rest.partition(":")
    tag = tag if colon else DEFAULT_TAG
    problem = _clone_url_problem(location, user, name, tag)
    if problem:
        raise InvalidName(f"invalid clone URL {_show(text)}: {problem}")
    return CloneURL(location, user, name, tag)


# Node names --------------------------------------------------------------------------------

# A node name is its DHCP host name (option 12, from dnsmasq's options.d) and a command line
# argument: a host name label, shorter than Linux's user names so that a name and a suffix
# fit in 63.
NODE_NAME_MAX = 32
_NODE_NAME_RE = re.compile(r"[a-z0-9]+(?:-+[a-z0-9]+)*")
_NODE_NAME_RULE = (
    f"use lower-case letters, digits and '-' (not first or last), at most {NODE_NAME_MAX} "
    "characters"
)


def check_node_name(text: str) -> str:
    """`text` if it is a node name users may give (`vnode1`); InvalidName saying what is
    allowed otherwise."""
    if len(text) > NODE_NAME_MAX or not _NODE_NAME_RE.fullmatch(text):
        raise InvalidName(f"invalid node name {_show(text)}: {_NODE_NAME_RULE}")
    return text


# MAC addresses -----------------------------------------------------------------------------

# Six hex pairs separated by ':' or '-', the same separator throughout.
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}")


def is_image_id(text: str) -> bool:
    """Whether `text` is a full image id of the repository (64 lower-case hex digits)."""
    return _IMAGE_ID_RE.fullmatch(text) is not None


def check_image_id(text: str) -> str:
    """`text` when it is a full image id; ValueError saying what one is if not."""
    if not is_image_id(text):
        raise ValueError(f"not a full image id (64 hex digits, lower case): {text[:80]!r}")
    return text


def normalise_mac(mac: str) -> str:
    """`mac` in lower-case colon form; ValueError naming it unless it is six hex pairs."""
    if not _MAC_RE.fullmatch(mac):
        raise ValueError(
            f"invalid MAC address {mac[:40]!r}: expected six hex pairs like 00:11:22:aa:bb:cc"
        )
    return mac.lower().replace("-", ":")


# Build sources: git URLs and folders inside them ------------------------------------------

GIT_URL_MAX = 2048
SUB_DIR_MAX = 1024
_SUB_DIR_DEPTH = 64
# What a git URL may hold: letters, digits and the URL characters git repositories use. Left
# out on purpose: spaces, quotes, ';', '$', '&', '=', '?' and '#' (no query or fragment).
_GIT_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/@%+\[\]-]+")
_GIT_URL_RULE = (
    "use https://host/path, ssh://[user@]host[:port]/path, [user@]host:path or file:///path"
)
# git's `<transport>::<address>` form runs a remote helper (`ext::` runs any command).
_GIT_TRANSPORT_RE = re.compile(r"[A-Za-z0-9+.-]*::")
_GIT_USER_RE = re.compile(r"[A-Za-z0-9._-]+")
_GIT_SCP_RE = re.compile(
    r"(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9]+(?:[.-]+[A-Za-z0-9]+)*)"
    r":(?P<path>[^/:@-][^:@]*|/[^:@]*)"
)


def _git_url_problem(text: str) -> str | None:
    if not text:
        return "the URL is empty"
    if len(text) > GIT_URL_MAX:
        return f"at most {GIT_URL_MAX} characters are allowed"
    if not _GIT_URL_CHARS.fullmatch(text):
        return "it holds a character that is not allowed (space, quote, ';', '$', '=', '?'...)"
    if text.startswith("-"):
        return "it must not start with '-'"
    if _GIT_TRANSPORT_RE.match(text):
        return "git's '<transport>::' forms are not allowed"
    scheme, sep, rest = text.partition("://")
    if not sep:
        if "/" in text.partition(":")[0] or not _GIT_SCP_RE.fullmatch(text):
            return "it is no URL git reads as https, ssh or file"
        return None
    if scheme == "file":
        path = rest.removeprefix("localhost")
        if not path.startswith("/") or ".." in path.split("/"):
            return "a file URL names an absolute path without '..': file:///path/to/repo"
        return None
    if scheme not in ("https", "ssh"):
        return f"scheme {_show(scheme)} is not allowed (https, ssh or file only)"
    authority, slash, path = rest.partition("/")
    user, at, host = authority.rpartition("@")
    if at and (scheme != "ssh" or not _GIT_USER_RE.fullmatch(user)):
        return "a user name only in an ssh URL (no login, no password in an https URL)"
    if not _DOMAIN_RE.fullmatch(host):
        return f"host {_show(host)} is not allowed: a host name or address, optionally :port"
    if not slash or not path:
        return "the repository path after the host is missing"
    return None


def check_git_url(text: str) -> str:
    """`text` when it is a git URL of the https, ssh (`ssh://` or `[user@]host:path`) or file
    form, safe to give git after `--`; InvalidName saying what is allowed otherwise."""
    problem = _git_url_problem(text)
    if problem:
        raise InvalidName(f"invalid git URL {_show(text)}: {problem}; {_GIT_URL_RULE}")
    return text


def parse_sub_dir(text: str) -> str:
    """A folder inside a build source: relative, without '..', as `a/b` ("" for the top).

    Raises InvalidName saying what is allowed.
    """
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if len(text) > SUB_DIR_MAX:
        problem = f"at most {SUB_DIR_MAX} characters are allowed"
    elif not text.isprintable():
        problem = "it holds a control character"
    elif text.startswith("/"):
        problem = "it must be relative to the repository's top folder, not absolute"
    elif ".." in parts:
        problem = "'..' is not allowed: the folder must lie inside the repository"
    elif len(parts) > _SUB_DIR_DEPTH:
        problem = f"at most {_SUB_DIR_DEPTH} levels are allowed"
    else:
        return "/".join(parts)
    raise InvalidName(f"invalid sub-folder {_show(text)}: {problem}")
