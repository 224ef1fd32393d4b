"""The `mxpolicy serve` API as this module calls it: hooks, the outbox (claim, ack), and the
plugins' web pages (proxied)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .http import HttpClient, HttpError, Response
from .wire import Action, Decision, WireError, hook_request, parse_claimed, parse_decision

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """The service is unreachable, timed out, or answered an error: the caller applies the
    callback's failure policy."""


class Service:
    def __init__(self, http: HttpClient, base_url: str, secret: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.secret = secret

    async def hook(self, hook: str, context: Mapping[str, Any],
                   facts: Mapping[str, Any] | None, *, timeout_s: float) -> Decision:
        url = f"{self.base_url}/_mxpolicy/v1/hooks/{hook}"
        try:
            status, body = await self.http.json_call("POST", url, hook_request(context, facts),
                                                     token=self.secret, timeout_s=timeout_s)
        except HttpError as e:
            raise ServiceError(str(e)) from e
        if status != 200:
            raise ServiceError(f"{hook}: the service answered {status}: {body}")
        try:
            decision = parse_decision(body)
        except WireError as e:
            raise ServiceError(f"{hook}: {e}") from e
        for failure in decision.failures:
            log.warning("mxpolicy: %s: a plugin failed: %s", hook, failure)
        return decision

    async def claim(self, limit: int, *, timeout_s: float = 10.0) -> list[Action]:
        body = await self._admin("outbox/claim", {"limit": limit}, timeout_s)
        try:
            return parse_claimed(body)
        except WireError as e:
            raise ServiceError(f"outbox claim: {e}") from e

    async def ack(self, ids: list[int], *, timeout_s: float = 10.0) -> None:
        if not ids:
            return
        await self._admin("outbox/ack", {"ids": ids}, timeout_s)

    async def _admin(self, path: str, payload: Mapping[str, Any], timeout_s: float) -> Any:
        """POST an admin call (`/_mxpolicy/v1/admin/<path>`): its JSON answer, or
        `ServiceError` for a transport failure or a status other than 200."""
        url = f"{self.base_url}/_mxpolicy/v1/admin/{path}"
        try:
            status, body = await self.http.json_call("POST", url, payload,
                                                     token=self.secret, timeout_s=timeout_s)
        except HttpError as e:
            raise ServiceError(str(e)) from e
        if status != 200:
            raise ServiceError(f"{path.replace('/', ' ')}: {status}: {body}")
        return body

    async def web(self, method: str, path_and_query: str, headers: list[tuple[bytes, bytes]],
                  body: bytes, *, timeout_s: float = 10.0) -> Response:
        """A plugin page: ``path_and_query`` starts with ``/_mxpolicy/<instance>/``."""
        try:
            return await self.http.request(method, f"{self.base_url}{path_and_query}",
                                           body=body if body or method != "GET" else None,
                                           raw_headers=headers, timeout_s=timeout_s)
        except HttpError as e:
            raise ServiceError(str(e)) from e
