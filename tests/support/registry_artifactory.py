"""A path-rewriting proxy: JFrog Artifactory's repository-path layout over a real registry.

Only the catalog is rewritten. Artifactory serves an image `<repository>/<name>` at
`/v2/<repository>/<name>/...`, which is where the real registry behind keeps it, so those
requests pass unchanged (Authorization included, for an htpasswd registry). What differs is
the catalog: there is none at `/v2/_catalog`, and `/v2/<repository>/_catalog` lists that
repository's images by their names relative to it, paginated with `n` and `last` and a `Link`
header. The proxy builds it from the real registry's catalog.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from aiohttp import web

from tests.support.registry_proxy import Proxy

_REPO_CATALOG = re.compile(r"/v2/([^/]+)/_catalog")


class ArtifactoryProxy(Proxy):
    """Artifactory's catalog routes in front of the registry at `upstream`."""

    async def answer(self, request: web.Request) -> web.StreamResponse:
        """404 for the root catalog, a rewritten per-repository catalog, else forwarding."""
        if request.path == "/v2/_catalog":
            return web.json_response(
                {"errors": [{"code": "NOT_FOUND", "message": "use /v2/<repo>/_catalog"}]},
                status=404,
            )
        match = _REPO_CATALOG.fullmatch(request.path)
        if match is None:
            return await self.forward(request)
        upstream = await self.forward(request, "/v2/_catalog?n=1000")
        if upstream.status != 200:
            return upstream
        assert isinstance(upstream.body, bytes)
        prefix = match.group(1) + "/"
        names = sorted(
            r.removeprefix(prefix)
            for r in json.loads(upstream.body)["repositories"]
            if r.startswith(prefix)
        )
        last = request.query.get("last", "")
        n = int(request.query.get("n", "100"))
        after = [name for name in names if name > last]
        page, more = after[:n], len(after) > n
        headers = {}
        if more:
            link = f"{request.path}?last={quote(page[-1], safe='')}&n={n}"
            headers["Link"] = f'<{link}>; rel="next"'
        return web.json_response({"repositories": page}, headers=headers)
