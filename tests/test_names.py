"""Names: local names, Docker references, clone URLs; every rule, round trips, hostile text."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waltd.names import (
    CLONE_LOCATIONS,
    LOCAL_NAME_MAX,
    NAME_TOTAL_MAX,
    CloneURL,
    InvalidName,
    Reference,
    format_clone_url,
    host_port,
    is_repository,
    is_tag,
    normalise_local,
    parse_clone_url,
    parse_local,
    parse_reference,
    registry_reference,
    split_user_name,
    to_local,
    walt_user,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4
HOSTILE = [
    " ",
    "\t",
    "\n",
    "\r",
    "\x00",
    "\x1b",
    "\x7f",
    ";",
    "$",
    "(",
    ")",
    "`",
    "|",
    "&",
    "<",
    ">",
    "\\",
    "'",
    '"',
    "*",
    "?",
    "!",
    "#",
    "~",
    "{",
    "}",
    "=",
    ",",
    "%",
    "+",
    "\u00e9",
    "\u2028",
]


# normalise_local / walt_user (kept as they were: other modules use them) -------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Bob_Smith", "bob-smith"), ("--a..b--", "a-b"), ("root", "root"), ("__", "")],
)
def test_normalise_local(text: str, expected: str) -> None:
    assert normalise_local(text) == expected


def test_walt_user() -> None:
    assert walt_user("Jean.Dupont") == "jean-dupont"
    with pytest.raises(ValueError, match="no usable walt user name"):
        walt_user("___")


# Local names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rpi", ("rpi", "latest")),
        ("my-image:v1", ("my-image", "v1")),
        ("a--b:1.0_rc-2", ("a--b", "1.0_rc-2")),
        ("0:_x", ("0", "_x")),
        ("defaults", ("defaults", "latest")),
        ("x" * LOCAL_NAME_MAX + ":" + "t" * 128, ("x" * LOCAL_NAME_MAX, "t" * 128)),
    ],
)
def test_parse_local_accepts(text: str, expected: tuple[str, str]) -> None:
    assert parse_local(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Foo", "invalid image name 'Foo': use lower-case letters, digits and '-'"),
        ("", "invalid image name '': the name is empty"),
        (":v1", "invalid image name '': the name is empty"),
        ("-rf", "invalid image name '-rf': .*not first or last"),
        ("foo-", "invalid image name 'foo-'"),
        ("a_b", "invalid image name 'a_b'"),
        ("a.b", "invalid image name 'a.b'"),
        ("me/img", "invalid image name 'me/img'"),
        ("x" * (LOCAL_NAME_MAX + 1), f"at most {LOCAL_NAME_MAX} characters are allowed"),
        ("default", "'default': it is reserved .* choose another name"),
        ("default:v2", "'default': it is reserved"),
        ("foo:bar:baz", "'foo:bar:baz': at most one ':tag' is allowed"),
        ("foo:", "invalid tag '' in image name 'foo:': use lower-case letters, digits"),
        ("foo:V1", "invalid tag 'V1'"),
        ("foo:-x", "invalid tag '-x'.*not '.' or '-' first"),
        ("foo:.x", "invalid tag '.x'"),
        ("foo:" + "t" * 129, "at most 128 characters"),
        ("foo:a b", "invalid tag 'a b'"),
    ],
)
def test_parse_local_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidName, match=message):
        parse_local(text)


def test_invalid_name_is_a_value_error() -> None:
    assert issubclass(InvalidName, ValueError)


def test_long_text_is_cut_in_messages() -> None:
    with pytest.raises(InvalidName) as caught:
        parse_local("A" * 100_000)
    assert len(str(caught.value)) < 300 and "100000 characters" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rpi-3-b-plus-default", "rpi-3-b-plus-default"),
        ("Debian_Bookworm.v2", "debian-bookworm-v2"),
        ("waltplatform/rpi", "waltplatform-rpi"),
        ("__x__", "x"),
        ("Caf\u00e9 Cr\u00e8me", "caf-cr-me"),
    ],
)
def test_to_local(text: str, expected: str) -> None:
    assert to_local(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "'' gives no usable image name: it holds no letter or digit"),
        ("__..--", "no usable image name"),
        ("\u00e9\u00e8", "no usable image name"),
        ("Default", "'Default' gives an unusable local name; .*reserved"),
        ("_default_", "reserved"),
        ("x" * (LOCAL_NAME_MAX + 1), f"at most {LOCAL_NAME_MAX} characters"),
    ],
)
def test_to_local_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidName, match=message):
        to_local(text)


# Docker references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ubuntu", Reference(None, "ubuntu", None, None)),
        ("ubuntu:22.04", Reference(None, "ubuntu", "22.04", None)),
        (
            "waltplatform/rpi-3-b-default",
            Reference(None, "waltplatform/rpi-3-b-default", None, None),
        ),
        (
            "docker.io/library/ubuntu:latest",
            Reference("docker.io", "library/ubuntu", "latest", None),
        ),
        ("localhost/foo", Reference("localhost", "foo", None, None)),
        ("localhost:5000/a/b/c:Tag_1", Reference("localhost:5000", "a/b/c", "Tag_1", None)),
        ("localhost:5000", Reference(None, "localhost", "5000", None)),  # as Docker: a tag
        ("foo.com", Reference(None, "foo.com", None, None)),  # no '/': a path, not a registry
        ("Reg-1.Example.org/x", Reference("Reg-1.Example.org", "x", None, None)),
        ("192.168.1.1:5000/a", Reference("192.168.1.1:5000", "a", None, None)),
        ("[::1]:5000/a:b", Reference("[::1]:5000", "a", "b", None)),
        ("[fe80::1]/a", Reference("[fe80::1]", "a", None, None)),
        (f"ubuntu@{DIGEST}", Reference(None, "ubuntu", None, DIGEST)),
        (f"r.io/u/i:t@{DIGEST}", Reference("r.io", "u/i", "t", DIGEST)),
        ("x/a__b.c_d---e", Reference(None, "x/a__b.c_d---e", None, None)),
        ("x:" + "_" * 128, Reference(None, "x", "_" * 128, None)),
    ],
)
def test_parse_reference_accepts(text: str, expected: Reference) -> None:
    ref = parse_reference(text)
    assert ref == expected and str(ref) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid image reference '': the repository name is empty"),
        (f"@{DIGEST}", "the repository name is empty"),
        ("Ubuntu", "path component 'Ubuntu' must be lower case"),
        ("Waltplatform/x:T", "path component 'Waltplatform' must be lower case"),
        ("a//b", "a path component is empty .*'//'"),
        ("a/", "a path component is empty"),
        ("/a", "a path component is empty"),
        ("a:", "the tag after ':' is empty"),
        ("a:-x", "tag '-x' is not allowed: use letters, digits"),
        ("a:.x", "tag '.x' is not allowed"),
        ("a:" + "t" * 129, "at most 128 characters"),
        ("a:b:c", "path component 'a:b' is not allowed"),
        ("a@", "digest '' is not allowed: use sha256:<64 lower-case hex digits>"),
        ("a@sha256:abc", "digest 'sha256:abc' is not allowed"),
        ("a@" + DIGEST.upper(), "is not allowed: use sha256"),
        ("a@sha512:" + "0" * 128, "digest 'sha512:"),
        (f"a@{DIGEST}@{DIGEST}", "digest"),
        ("..", "path component '..' is not allowed: use lower-case letters and digits"),
        ("a..b", "path component 'a..b' is not allowed"),
        ("a___b", "path component 'a___b'"),
        ("-a", "path component '-a'"),
        ("a-", "path component 'a-'"),
        ("a b", "path component 'a b'"),
        ("a;rm", "path component 'a;rm'"),
        ("$(id)", "path component '\\$\\(id\\)'"),
        ("-bad.com/foo", "registry '-bad.com' is not allowed: use a host name"),
        ("foo.com:/a", "registry 'foo.com:'"),
        ("foo.com:x/a", "registry 'foo.com:x'"),
        ("a_b.com/x", "registry 'a_b.com'"),
        ("[zz::1]/x", "registry '\\[zz::1\\]'"),
        ("a" * (NAME_TOTAL_MAX + 1), f"256 characters long, at most {NAME_TOTAL_MAX}"),
        ("r.io/" + "a" * (NAME_TOTAL_MAX - 4), "256 characters long"),
    ],
)
def test_parse_reference_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidName, match=message):
        parse_reference(text)


def test_reference_length_bound_is_inclusive() -> None:
    assert parse_reference("a" * NAME_TOTAL_MAX).path == "a" * NAME_TOTAL_MAX
    assert parse_reference("r.io/" + "a" * (NAME_TOTAL_MAX - 5)).domain == "r.io"


def test_reference_user_and_repo() -> None:
    ref = parse_reference("localhost:5000/walt/rpi/extra:v1")
    assert (ref.name, ref.user, ref.repo) == ("localhost:5000/walt/rpi/extra", "walt", "rpi/extra")
    hub = parse_reference("waltplatform/rpi-3-b-default")
    assert (hub.user, hub.repo) == ("waltplatform", "rpi-3-b-default")
    single = parse_reference("ubuntu:22.04")
    assert (single.name, single.user, single.repo) == ("ubuntu", None, None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((None, "foo.com/bar", None, None), "'foo.com' would read as a registry"),
        ((None, "localhost/bar", None, None), "'localhost' would read as a registry"),
        (("x y", "a", None, None), "registry 'x y'"),
        (("", "a", None, None), "registry ''"),
        ((None, "a", "", None), "the tag after ':' is empty"),
        ((None, "A", None, None), "must be lower case"),
        ((None, "a", None, "md5:0"), "digest 'md5:0'"),
    ],
)
def test_reference_checks_its_fields(
    fields: tuple[str | None, str, str | None, str | None], message: str
) -> None:
    with pytest.raises(InvalidName, match=f"invalid image reference .*{message}"):
        Reference(*fields)


# registry_reference ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("reg.example.org", 5000, "walt/rpi", "v1"), "reg.example.org:5000/walt/rpi:v1"),
        (("reg.example.org", 443, "walt/rpi", "latest"), "reg.example.org:443/walt/rpi:latest"),
        (("reg.example.org", None, "walt/rpi", "latest"), "reg.example.org/walt/rpi:latest"),
        (("localhost", None, "a", "b"), "localhost/a:b"),
        (("10.0.0.1", 5000, "a/b", "T"), "10.0.0.1:5000/a/b:T"),
        (("fd00::1", 5000, "a/b", "t"), "[fd00::1]:5000/a/b:t"),
        (("fd00::1", None, "a", "t"), "[fd00::1]/a:t"),
        ((None, None, "waltplatform/rpi-default", "latest"), "waltplatform/rpi-default:latest"),
    ],
)
def test_registry_reference(args: tuple[str | None, int | None, str, str], expected: str) -> None:
    text = registry_reference(*args)
    assert text == expected
    assert str(parse_reference(text)) == text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None, 5000, "a", "b"), "port 5000 given without a registry host"),
        (("reg.example.org", 5000, "A/b", "t"), "must be lower case"),
        (("reg.example.org", 5000, "a", "-t"), "tag '-t'"),
        (("reg example", None, "a", "t"), "registry 'reg example'"),
        (("reg.example.org", -1, "a", "t"), "registry 'reg.example.org:-1'"),
        ((None, None, "foo.com/a", "t"), "would read as a registry"),
    ],
)
def test_registry_reference_refuses(
    args: tuple[str | None, int | None, str, str], message: str
) -> None:
    with pytest.raises(InvalidName, match=message):
        registry_reference(*args)


# Clone URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        (
            "hub:waltplatform/rpi-3-b-default",
            (),
            CloneURL("hub", "waltplatform", "rpi-3-b-default"),
        ),
        ("walt:bob/img:v2", (), CloneURL("walt", "bob", "img", "v2")),
        ("docker:a.b/c__d:Tag.1-X", (), CloneURL("docker", "a.b", "c__d", "Tag.1-X")),
        ("local:eve/x", ("local",), CloneURL("local", "eve", "x")),
        # Docker allows '..' inside a tag; it cannot start one nor meet a '/'.
        ("hub:a/b:1..2", (), CloneURL("hub", "a", "b", "1..2")),
        ("my-reg:eve/x:_", ["local", "my-reg"], CloneURL("my-reg", "eve", "x", "_")),
    ],
)
def test_parse_clone_url(text: str, labels: tuple[str, ...], expected: CloneURL) -> None:
    url = parse_clone_url(text, labels)
    assert url == expected
    assert str(url) == format_clone_url(url) == text


def test_clone_url_hides_latest_only() -> None:
    url = parse_clone_url("hub:a/b:latest")
    assert url.tag == "latest" and str(url) == "hub:a/b"
    assert parse_clone_url(str(url)) == url
    assert str(CloneURL("hub", "a", "b", "Latest")) == "hub:a/b:Latest"


def test_clone_url_case_rules() -> None:
    # Docker forbids upper case in repository names, not in tags.
    assert parse_clone_url("hub:a/b:V1.0").tag == "V1.0"
    with pytest.raises(InvalidName, match="user 'Alice' must be lower case"):
        parse_clone_url("hub:Alice/b")
    with pytest.raises(InvalidName, match="image name 'Rpi' must be lower case"):
        parse_clone_url("hub:a/Rpi")
    with pytest.raises(InvalidName, match="unknown location 'HUB'"):
        parse_clone_url("HUB:a/b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid clone URL '': a clone URL is <location>:<user>/<name>\\[:<tag>\\]"),
        ("waltplatform/rpi", "a clone URL is <location>:<user>/<name>"),
        ("hub:rpi", "a clone URL is <location>"),
        ("hub:rpi:v1", "a clone URL is <location>"),
        ("nowhere:a/b", "unknown location 'nowhere', use one of walt, hub, docker, local$"),
        (":a/b", "unknown location ''"),
        ("a b:c/d", "unknown location 'a b'"),
        ("hub:/b", "user is empty"),
        ("hub:a/", "image name is empty"),
        ("hub:a/b:", "the tag after ':' is empty"),
        ("hub:a/b/c", "image name 'b/c' must not contain '/'"),
        ("hub:a/../etc", "image name '../etc' must not contain '/'"),
        ("hub:../b", "user '..' is not allowed: use lower-case letters and digits"),
        ("hub:a/..", "image name '..' is not allowed"),
        ("hub:a/b..c", "image name 'b..c' is not allowed"),
        ("hub:a/b c", "image name 'b c' is not allowed"),
        ("hub:a/b\nc", "image name 'b\\\\nc' is not allowed"),
        ("hub:a/b\x00", "image name 'b\\\\x00' is not allowed"),
        (f"hub:a/b@{DIGEST}", "image name 'b@sha256' is not allowed"),
        ("hub:a/b:t@x", "tag 't@x' is not allowed"),
        ("hub:a;rm -rf ~/b", "user 'a;rm -rf ~' is not allowed"),
        ("hub:$(id)/b", "user '\\$\\(id\\)' is not allowed"),
        ("hub:a/`id`", "image name '`id`' is not allowed"),
        ("hub:a/b:$(id)", "tag '\\$\\(id\\)' is not allowed"),
        ("hub:a/b:t;ls", "tag 't;ls' is not allowed"),
        ("hub:-a/b", "user '-a' is not allowed"),
        ("hub:a/-b", "image name '-b' is not allowed"),
        ("hub:a/b:-t", "tag '-t' is not allowed: use letters, digits"),
        ("hub:a/b:" + "t" * 129, "at most 128 characters"),
        ("hub:a/" + "b" * NAME_TOTAL_MAX, "<user>/<name> is 257 characters long, at most 255"),
    ],
)
def test_parse_clone_url_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidName, match=message):
        parse_clone_url(text, ("local",))


def test_clone_url_locations_are_listed_once() -> None:
    with pytest.raises(InvalidName, match=r"use one of walt, hub, docker, a, z$"):
        parse_clone_url("x:a/b", ["z", "hub", "a", "Bad Label"])


def test_clone_url_checks_its_fields() -> None:
    with pytest.raises(InvalidName, match="location 'x y' is not allowed"):
        CloneURL("x y", "a", "b")
    with pytest.raises(InvalidName, match="invalid clone URL 'hub:a/b:-x': tag '-x'"):
        CloneURL("hub", "a", "b", "-x")
    # The location grammar only: which labels exist is parse_clone_url's business.
    assert str(CloneURL("some-label", "a", "b")) == "some-label:a/b"


def test_clone_url_length_bound_is_inclusive() -> None:
    name = "b" * (NAME_TOTAL_MAX - 2)
    assert parse_clone_url(f"hub:a/{name}").name == name


# Properties --------------------------------------------------------------------------------

_LOWER_ALNUM = string.ascii_lowercase + string.digits
_ALNUM = string.ascii_letters + string.digits
_LABELS = ("local", "reg-2")


def _joined(runs: st.SearchStrategy[str], separators: list[str]) -> st.SearchStrategy[str]:
    """run (separator run)*, at most three separators."""
    return st.builds(
        lambda first, rest: first + "".join(sep + run for sep, run in rest),
        runs,
        st.lists(st.tuples(st.sampled_from(separators), runs), max_size=3),
    )


# Written from Docker's grammar, not from the module's patterns, so they check them.
components = _joined(st.text(_LOWER_ALNUM, min_size=1, max_size=6), [".", "_", "__", "-", "---"])
paths = st.lists(components, min_size=1, max_size=4).map("/".join)
tags = st.builds(str.__add__, st.sampled_from(_ALNUM + "_"), st.text(_ALNUM + "_.-", max_size=127))
digests = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}")
host_labels = _joined(st.text(_ALNUM, min_size=1, max_size=6), ["-", "--"])
hosts = st.one_of(
    st.just("localhost"),
    st.lists(host_labels, min_size=2, max_size=4).map(".".join),
    st.text("0123456789abcdefABCDEF:", min_size=1, max_size=12).map(lambda h: f"[{h}:]"),
)
# A host without '.' or ':' names a registry only with a port (Docker's rule).
domains = hosts | st.builds(
    str.__add__, hosts | host_labels, st.integers(0, 99999).map(lambda p: f":{p}")
)
locations = st.sampled_from([*CLONE_LOCATIONS, *_LABELS])
local_names = _joined(st.text(_LOWER_ALNUM, min_size=1, max_size=6), ["-", "--"]).filter(
    lambda name: name != "default"
)
local_tags = st.builds(
    str.__add__, st.sampled_from(_LOWER_ALNUM + "_"), st.text(_LOWER_ALNUM + "._-", max_size=127)
)
# Text close to the grammars, so refusals are exercised deep inside them.
near_text = st.lists(
    st.sampled_from([*"aZ09:/@._-[]", "__", "sha256:", "localhost", "hub:", "default", *HOSTILE]),
    max_size=30,
).map("".join)
any_text = st.text() | near_text


@given(st.none() | domains, paths, st.none() | tags, st.none() | digests)
def test_generated_references_parse_and_round_trip(
    domain: str | None, path: str, tag: str | None, digest: str | None
) -> None:
    name = path if domain is None else f"{domain}/{path}"
    text = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    if len(name) > NAME_TOTAL_MAX:
        with pytest.raises(InvalidName, match="characters long"):
            parse_reference(text)
        return
    first, _, rest = path.partition("/")
    if domain is None and rest and ("." in first or first == "localhost"):
        # Docker reads such a first component as the registry (refused if it is none).
        try:
            ref = parse_reference(text)
        except InvalidName as error:
            assert f"registry {first!r} is not allowed" in str(error)
            return
        assert (ref.domain, ref.path) == (first, rest)
    else:
        ref = parse_reference(text)
        assert ref == Reference(domain, path, tag, digest)
    assert str(ref) == text and parse_reference(str(ref)) == ref


@given(locations, components, components, st.none() | tags)
def test_generated_clone_urls_parse_and_round_trip(
    location: str, user: str, name: str, tag: str | None
) -> None:
    text = f"{location}:{user}/{name}" + (f":{tag}" if tag else "")
    url = parse_clone_url(text, _LABELS)
    assert url == CloneURL(location, user, name, tag or "latest")
    assert parse_clone_url(str(url), _LABELS) == url
    assert str(url) == (text.removesuffix(":latest") if tag == "latest" else text)


@given(local_names, st.none() | local_tags)
def test_generated_local_names_parse(name: str, tag: str | None) -> None:
    assert parse_local(name if tag is None else f"{name}:{tag}") == (name, tag or "latest")


@given(any_text)
def test_any_text_gives_a_result_or_invalid_name(text: str) -> None:
    parsers = (parse_local, parse_reference, to_local, lambda t: parse_clone_url(t, _LABELS))
    for parse in parsers:
        try:
            parse(text)
        except InvalidName:
            pass


@given(any_text)
def test_to_local_yields_a_valid_local_name(text: str) -> None:
    try:
        name = to_local(text)
    except InvalidName:
        return
    assert parse_local(name) == (name, "latest")


@given(any_text | st.builds("{}:{}/{}:{}".format, locations, components, components, tags))
def test_accepted_clone_urls_are_safe_arguments(text: str) -> None:
    try:
        url = parse_clone_url(text, _LABELS)
    except InvalidName:
        return
    assert url.location in (*CLONE_LOCATIONS, *_LABELS)
    for part in (url.user, url.name):
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", part) and ".." not in part
    # Docker allows '..' inside a tag, never first and never with '/': no path traversal.
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", url.tag)


@given(
    locations,
    components,
    components,
    tags,
    st.sampled_from([*HOSTILE, "..", "/", "@", "$(", ":"]),
    st.data(),
)
def test_hostile_text_in_a_clone_url_is_refused(
    location: str, user: str, name: str, tag: str, bad: str, data: st.DataObject
) -> None:
    text = f"{location}:{user}/{name}:{tag}"
    # '..' is refused anywhere before the tag (see test_accepted_clone_urls_are_safe_arguments).
    end = len(text) - len(tag) - 1 if bad == ".." else len(text)
    at = data.draw(st.integers(0, end))
    with pytest.raises(InvalidName):
        parse_clone_url(text[:at] + bad + text[at:], _LABELS)


@given(st.text(min_size=500, max_size=3000))
def test_long_texts_are_refused_with_short_messages(text: str) -> None:
    parsers = (parse_local, parse_reference, lambda t: parse_clone_url(f"hub:a/{t}"))
    for parse in parsers:
        with pytest.raises(InvalidName) as caught:
            parse(text)
        assert len(str(caught.value)) < 1500


def test_repository_tag_and_user_name_grammars() -> None:
    assert is_repository("alice/rpi-os") and is_repository("a/b/c") and is_repository("solo")
    for bad in ("", "Alice/x", "a//b", "/a", "a/", "a b", "-a/b", "a/b:tag"):
        assert not is_repository(bad), bad
    assert is_tag("v1.0_RC") and not is_tag(".hidden") and not is_tag("a" * 129)
    assert split_user_name("alice/rpi-os") == ("alice", "rpi-os")
    for other in ("solo", "a/b/c", "Alice/x", "a/", None, 42):
        assert split_user_name(other) is None, other
    assert host_port("reg.example", 5000) == "reg.example:5000"
    assert host_port("::1", 5000) == "[::1]:5000"


@given(st.text(max_size=80))
def test_user_names_split_are_parts_of_a_valid_reference(text: str) -> None:
    split = split_user_name(text)
    if split is not None:
        assert parse_reference(f"{split[0]}/{split[1]}").path == text
