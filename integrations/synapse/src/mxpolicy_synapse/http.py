"""A small HTTP client on Twisted's `Agent` (persistent connections), for the service and for
Synapse's admin API. Every call has a timeout; deferreds are made yieldable for Synapse's
logcontexts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse

from synapse.module_api import make_deferred_yieldable


class HttpError(Exception):
    """The server could not be reached, or did not answer in time."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpClient:
    def __init__(self, max_per_host: int = 16) -> None:
        self._reactor: Any = reactor
        self._pool = HTTPConnectionPool(self._reactor, persistent=True)  # type: ignore[no-untyped-call]
        self._pool.maxPersistentPerHost = max_per_host
        # Idle connections are dropped before the service would close them (`mxpolicy serve`
        # closes one idle for `header_timeout_s`, 10 s by default: keep it above 5 s): a
        # request sent on a connection the server is closing fails, and Twisted never retries
        # a POST.
        self._pool.cachedConnectionTimeout = 5
        self._agent = Agent(self._reactor, pool=self._pool)  # type: ignore[no-untyped-call]

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: dict[str, str] | None = None,
                      raw_headers: list[tuple[bytes, bytes]] | None = None,
                      timeout_s: float) -> Response:
        h = Headers()
        for name, value in (headers or {}).items():
            h.addRawHeader(name.encode(), value.encode())
        for bname, bvalue in raw_headers or []:
            h.addRawHeader(bname, bvalue)
        producer = (cast(IBodyProducer, FileBodyProducer(BytesIO(body)))  # type: ignore[no-untyped-call]
                    if body is not None else None)
        d: defer.Deferred[IResponse] = self._agent.request(
            method.encode(), url.encode(), h, producer)

        async def whole() -> Response:
            response: IResponse = await d
            content: bytes = await readBody(response)
            raw = [(k, v) for k, vs in response.headers.getAllRawHeaders() for v in vs]
            return Response(int(response.code), raw, content)

        full: defer.Deferred[Response] = defer.ensureDeferred(whole())
        clock: IReactorTime = self._reactor
        full.addTimeout(timeout_s, clock)
        try:
            return await make_deferred_yieldable(full)
        except defer.TimeoutError as e:
            raise HttpError(f"{method} {url}: no answer within {timeout_s:.1f} s") from e
        except defer.CancelledError as e:
            raise HttpError(f"{method} {url}: cancelled after {timeout_s:.1f} s") from e
        except HttpError:
            raise
        except Exception as e:  # connection refused, reset, DNS, ...
            raise HttpError(f"{method} {url}: {type(e).__name__}: {e}") from e

    async def json_call(self, method: str, url: str, payload: Any | None, *,
                        token: str | None, timeout_s: float) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = json.dumps(payload).encode() if payload is not None else None
        response = await self.request(method, url, body=body, headers=headers,
                                      timeout_s=timeout_s)
        try:
            value = response.json() if response.body else {}
        except ValueError:
            value = {"error": response.body[:200].decode(errors="replace")}
        return response.status, value
