"""A token-issuing proxy: Docker Hub's Bearer flow in front of a real registry.

Only the auth layer is fake. Every `/v2/...` request needs `Authorization: Bearer <token>` with
a token granting its scope, else 401 with a challenge as Docker Hub words it
(`Bearer realm=".../token",service="...",scope="repository:<repo>:pull"`). `GET /token`
issues opaque tokens for the scope asked, checking Basic credentials against `users`
(anonymous tokens only when `anonymous`). Authorised requests go to the real (anonymous)
registry unchanged but for the token, which stays with the proxy.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time

from aiohttp import web

from tests.support.registry_proxy import Proxy

SERVICE = "walt-test-registry"
_SCOPED = re.compile(r"/v2/(.+)/(?:tags/list|manifests/[^/]+|blobs/[^/]+)")


def needed_scope(path: str) -> str | None:
    """The scope a registry path needs (None for the `/v2/` root)."""
    match = _SCOPED.fullmatch(path)
    if match:
        return f"repository:{match.group(1)}:pull"
    if path.endswith("/_catalog"):
        return "registry:catalog:*"
    return None


class TokenProxy(Proxy):
    """Bearer tokens in front of the registry at `upstream` (see the module docstring)."""

    def __init__(
        self,
        upstream: str,
        *,
        users: dict[str, str] | None = None,
        anonymous: bool = False,
        expires_in: float = 300,
    ) -> None:
        super().__init__(upstream)
        self.users = users or {}
        self.anonymous = anonymous
        self.expires_in = expires_in
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (scope, expiry)
        self.issued: list[tuple[str | None, str]] = []  # (user or None, scope)

    def revoke_all(self) -> None:
        """Forget every token issued (as a token service restarting would)."""
        self.tokens.clear()

    async def answer(self, request: web.Request) -> web.StreamResponse:
        """Tokens at /token; /v2/ requests checked, then forwarded."""
        if request.path == "/token":
            return self._issue(request)
        scope = needed_scope(request.path)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        granted = self.tokens.get(token)
        if granted is None or granted[1] < time.monotonic() or (scope and granted[0] != scope):
            challenge = f'Bearer realm="{self.url}/token",service="{SERVICE}"'
            if scope:
                challenge += f',scope="{scope}"'
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
            return web.Response(
                status=401,
                body=body,
                content_type="application/json",
                headers={"WWW-Authenticate": challenge},
            )
        return await self.forward(request, keep_authorization=False)

    def _issue(self, request: web.Request) -> web.Response:
        user = self._user(request.headers.get("Authorization", ""))
        if user is None or (user == "" and not self.anonymous):
            return web.Response(status=401, text='{"details":"incorrect username or password"}')
        if request.query.get("service") != SERVICE or "scope" not in request.query:
            return web.Response(status=400, text='{"details":"service and scope required"}')
        scope = request.query["scope"]
        token = secrets.token_urlsafe(24)
        self.tokens[token] = (scope, time.monotonic() + self.expires_in)
        self.issued.append((user or None, scope))
        return web.json_response(
            {"token": token, "access_token": token, "expires_in": self.expires_in}
        )

    def _user(self, authorization: str) -> str | None:
        """The user of valid Basic credentials, "" without any, None when they are wrong."""
        if not authorization:
            return ""
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user if self.users.get(user) == password and password else None
