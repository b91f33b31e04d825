"""Stand-ins for Docker Hub's web API and its token service, on 127.0.0.1 (no internet here).

What is fake here, and only this:
- `HubApiFake`: Hub's repository search (`/v2/search/repositories/`) and a user's repository
  list (`/v2/repositories/<user>/`), answering from a list of repository names the test gives,
  paginated with absolute `next` links as Hub does.
- `TokenFront`: the auth layer. It answers the registry API with Hub's Bearer challenge
  (`WWW-Authenticate: Bearer realm=...,service=...,scope=...`), issues tokens at its realm
  (anonymous, or for Basic credentials it checks), and passes every authorised request to a
  REAL docker registry (the lab's), which does all the rest. A token grants pull on the
  repositories of its scope only, as Hub's do; `denied` repositories get no pull access.

Also the reference system's way of publishing: `publish_metadata` pushes the per-user
`<user>/walt_metadata:latest` image whose label `metadata` lists the user's WalT images.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from lab import Lab, Registry, push_image
from tests.support.local_server import LocalServer

SERVICE = "registry.fake.test"
_SCOPE = re.compile(r"repository:([^:]+):([a-z,*]+)")
_REPO_PATH = re.compile(r"/v2/(.+)/(?:manifests|blobs|tags)/")


@dataclass
class HubRepo:
    """A repository as Hub's API lists it."""

    name: str  # user/repo (or a bare name for an official image)
    description: str = ""


@dataclass
class HubApiFake(LocalServer):
    """Hub's search and repositories endpoints over `repos` (see the module docstring).

    Search matches the query in the name or the description, as Hub roughly does. Pages hold
    at most `max_page_size` entries, so that a test sees `next` followed. `broken` makes every
    answer a 200 with a body that is not JSON. `requests` records each (path, query string).
    """

    repos: list[HubRepo] = field(default_factory=list)
    max_page_size: int = 100
    broken: bool = False
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()
        self.app.router.add_get("/v2/search/repositories/", self._search)
        self.app.router.add_get("/v2/repositories/{user}/", self._user_repos)

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        self.requests.append((request.path, request.query_string))
        if self.broken:
            return web.Response(text="<html>maintenance</html>", content_type="text/html")
        size = min(int(request.query.get("page_size", "25")), self.max_page_size)
        page = int(request.query.get("page", "1"))
        chunk = items[(page - 1) * size : page * size]
        following = None
        if page * size < len(items):
            following = str(request.url.update_query(page=str(page + 1)))
        body = {"count": len(items), "next": following, "previous": None, "results": chunk}
        return web.json_response(body)

    async def _search(self, request: web.Request) -> web.Response:
        query = request.query.get("query", "")
        found = [r for r in self.repos if query in r.name or query in r.description]
        items = [
            {
                "repo_name": r.name,
                "short_description": r.description,
                "star_count": 0,
                "pull_count": 0,
                "repo_owner": "",
                "is_automated": False,
                "is_official": "/" not in r.name,
            }
            for r in found
        ]
        return self._page(request, items)

    async def _user_repos(self, request: web.Request) -> web.Response:
        user = request.match_info["user"]
        mine = [r for r in self.repos if r.name.startswith(f"{user}/")]
        if not mine:
            self.requests.append((request.path, request.query_string))
            return web.json_response({"message": "object not found", "errinfo": {}}, status=404)
        items = [
            {"name": r.name.split("/", 1)[1], "namespace": user, "repository_type": "image"}
            for r in mine
        ]
        return self._page(request, items)


@dataclass
class TokenFront(LocalServer):
    """Hub's token auth in front of a real registry `backend` (see the module docstring).

    With `credentials` (user, password), a token request carrying other Basic credentials is
    refused (401), as Hub's token service does; without any it gets an anonymous token.
    `token_requests` counts tokens issued, `basic_users` the users who asked for one.
    """

    backend: Registry | None = None
    credentials: tuple[str, str] | None = None
    denied: set[str] = field(default_factory=set)
    token_requests: int = 0
    basic_users: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()
        self._tokens: dict[str, set[str]] = {}  # token -> repositories it may pull
        self._session: aiohttp.ClientSession | None = None
        self.app.router.add_get("/token", self._token)
        self.app.router.add_route("*", "/v2/{tail:.*}", self._proxy)
        self.app.on_cleanup.append(self._close)

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    def _challenge(self, scope: str | None, error: str = "") -> web.Response:
        params = f'Bearer realm="{self.url}/token",service="{SERVICE}"'
        if scope:
            params += f',scope="{scope}"'
        if error:
            params += f',error="{error}"'
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return web.json_response(body, status=401, headers={"WWW-Authenticate": params})

    async def _token(self, request: web.Request) -> web.Response:
        if request.query.get("service") != SERVICE:
            return web.json_response({"details": "unknown service"}, status=400)
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            self.basic_users.append(user)
            if self.credentials is None or (user, password) != self.credentials:
                return web.json_response({"details": "incorrect username or password"}, status=401)
        granted: set[str] = set()
        for scope in request.query.getall("scope", []):
            match = _SCOPE.fullmatch(scope)
            if match and "pull" in match.group(2).split(",") and match.group(1) not in self.denied:
                granted.add(match.group(1))
        token = secrets.token_urlsafe(24)
        self._tokens[token] = granted
        self.token_requests += 1
        return web.json_response({"token": token, "access_token": token, "expires_in": 300})

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        match = _REPO_PATH.match(request.path)
        repo = match.group(1) if match else None
        scope = f"repository:{repo}:pull" if repo else None
        header = request.headers.get("Authorization", "")
        granted = self._tokens.get(header.removeprefix("Bearer ")) if header else None
        if granted is None:
            return self._challenge(scope)
        if repo is not None and repo not in granted:
            # Hub answers a repository the token does not cover with 401 and its scope
            return self._challenge(scope, "insufficient_scope")
        return await self._forward(request)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self.backend is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() == "accept"}
        url = f"{self.backend.url}{request.path_qs}"
        async with self._session.request(
            request.method, url, headers=headers, allow_redirects=False
        ) as upstream:
            keep = ("content-type", "content-length", "docker-content-digest", "link", "etag")
            out = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() in keep},
            )
            await out.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(65536):
                    await out.write(chunk)
            await out.write_eof()
            return out


def encode_metadata(images: Mapping[str, Mapping[str, str]]) -> str:
    """The `metadata` label as the reference system writes it, from labels by image.

    Base64 of `{"walt.user.images": {"<user>/<repo>:<tag>": {"labels": {...}}}}`.
    """
    data = {"walt.user.images": {ref: {"labels": dict(labels)} for ref, labels in images.items()}}
    return base64.b64encode(json.dumps(data).encode()).decode()


async def publish_metadata(lab: Lab, registry: Registry, user: str, label_value: str) -> None:
    """Push `<user>/walt_metadata:latest` carrying the label `metadata=<label_value>`.

    Built as the reference builds it: from scratch, a label and an annotation, Docker format.
    """
    env = lab.containers_env
    name = f"docker.io/{user}/walt_metadata:latest"
    container = (await lab.run(["buildah", "from", "scratch"], env=env)).stdout.strip()
    try:
        config = ["--annotation", f"metadata={label_value}", "--label", f"metadata={label_value}"]
        await lab.run(["buildah", "config", *config, container], env=env)
        commit = ["buildah", "commit", "--quiet", "--format", "docker", container, name]
        await lab.run(commit, env=env)
    finally:
        await lab.run(["buildah", "rm", container], env=env)
    await push_image(lab, name, registry)
