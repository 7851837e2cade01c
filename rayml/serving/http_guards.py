"""Pure ASGI middlewares of the HTTP ingress (Starlette and FastAPI ship neither).

- :class:`BodyLimit`: a body over the limit gets 413 naming it, and is never buffered. A declared
  ``Content-Length`` over the limit is refused before a byte is read; a chunked body is read only up to the
  limit, then refused.
- :class:`InFlight`: counts the HTTP requests inside this replica's app, from their first byte to their answer,
  so a handler knows whether it is alone (and can skip the batch queue) or has company (and should batch).
- :class:`AccessLog`: one structured line per request (request id, route, status, latency, model version).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NamedTuple

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """``app.add_middleware(BodyLimit, max_bytes=lambda: limit)``: the limit is read per request, so a replica
    can set it from its config after the app object was built."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: Callable[[], int]) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > limit:
                await _too_large(send, limit)
                return
            await self.app(scope, receive, send)  # the server holds the body to its declared length
            return
        messages, size = [], 0
        while True:  # no declared length: read up to the limit, then replay what was read
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > limit:
                await _too_large(send, limit)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": [{"type": "body_too_large", "loc": ["body"], "input": None,
                                   "msg": f"request body is larger than max_body_bytes={limit}"}]}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Admission(NamedTuple):
    """What :class:`InFlight` admits: ``most`` requests inside (0: all); while overloaded, ``overload_most``."""

    most: int
    retry_after_s: int
    overload_most: int = 0  # 0: no overload mode
    hold_s: float = 0.0  # overloaded until this long after the latest shed


class InFlight:
    """``app.add_middleware(InFlight, counter=get, limit=get_admission)``: ``get().value`` is the number of HTTP
    requests in the app now.

    Admission control: a ``POST`` arriving while ``most`` requests are already inside is answered ``503`` with
    ``Retry-After`` at once, before its body is read or any work starts, so an overloaded replica spends its CPU
    on the requests it accepted instead of on a queue that grows until clients time out. Probes (``GET``) are
    always admitted. ``most == 0`` admits everything.

    Overload mode: a shed means demand exceeds what the replica serves, and every request admitted beyond the
    concurrency that keeps its batches full only waits (Little's law: latency = in flight / throughput). So for
    ``hold_s`` after the latest shed the limit is ``overload_most``; a closed-loop client with fewer connections
    than ``most`` never triggers it.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 counter: Callable[[], RequestCount], limit: Callable[[], Admission] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.counter = counter
        self.limit = limit
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counter = self.counter()
        if self.limit is not None and scope.get("method") == "POST":
            admission = self.limit()
            most = admission.most
            if most:
                now = self.clock()
                if admission.overload_most and now < counter.overloaded_until:
                    most = min(most, admission.overload_most)
                if counter.value >= most:
                    counter.shed += 1
                    if admission.overload_most:
                        counter.overloaded_until = now + admission.hold_s
                    await _over_capacity(send, most, admission.retry_after_s)
                    return
        counter.value += 1  # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            counter.value -= 1


class RequestCount:
    """A mutable count shared by a middleware and the app's handlers (one event loop: no lock)."""

    def __init__(self) -> None:
        self.value = 0
        self.shed = 0  # requests refused by admission control
        self.overloaded_until = 0.0  # time.monotonic() until which the overload limit applies

    def overloaded(self, now: float) -> bool:
        """Whether the overload limit applies at ``now`` (``time.monotonic()``)."""
        return now < self.overloaded_until


async def _over_capacity(send: Send, most: int, retry_after_s: int) -> None:
    body = json.dumps({"detail": f"over capacity: {most} requests in this replica already; retry after "
                                 f"{retry_after_s}s"}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(retry_after_s).encode())]})
    await send({"type": "http.response.body", "body": body})


class AccessLog:
    """``app.add_middleware(AccessLog, sample_rate=lambda: r, sink=fn)``: one structured line per request.

    Each line is a dict: ``request_id`` (the client's or HAProxy's ``x-request-id``, else a new one; also sent
    back as a response header), ``method``, ``route``, ``status``, ``latency_ms`` (first byte in to last byte out)
    and ``model_version`` (the ``x-model-version`` header the handler set). A ``sample_rate`` share of requests is
    logged, and every 5xx whatever the rate.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], sample_rate: Callable[[], float],
                 sink: Callable[[dict[str, Any]], None]) -> None:
        self.app = app
        self.sample_rate = sample_rate
        self.sink = sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"")
        request_id = given.decode("latin-1") if 0 < len(given) <= 128 else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id  # handlers read it as request.state.request_id
        seen: dict[str, Any] = {"status": 500, "model_version": None}

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                out = list(message.get("headers") or [])
                names = set()
                for name, value in out:
                    names.add(name.lower())
                    if name.lower() == b"x-model-version":
                        seen["model_version"] = value.decode("latin-1")
                if not given and b"x-request-id" not in names:  # a given id is echoed by Serve itself
                    out.append((b"x-request-id", request_id.encode("latin-1")))
                    message = {**message, "headers": out}
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            status = seen["status"]
            if status >= 500 or random.random() < self.sample_rate():
                self.sink({"request_id": request_id, "method": scope.get("method"), "route": scope.get("path"),
                           "status": status, "latency_ms": round((time.perf_counter() - started) * 1e3, 3),
                           "model_version": seen["model_version"]})
