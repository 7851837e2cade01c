"""Pure ASGI middlewares of the HTTP ingress (Starlette and FastAPI ship neither).

- :class:`BodyLimit`: a body over the limit gets 413 naming it, and is never buffered. A declared
  ``Content-Length`` over the limit is refused before a byte is read; a chunked body is read only up to the
  limit, then refused.
- :class:`InFlight`: counts the HTTP requests inside this replica's app, from their first byte to their answer,
  so a handler knows whether it is alone (and can skip the batch queue) or has company (and should batch).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

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


class InFlight:
    """``app.add_middleware(InFlight, counter=c)``: ``c.value`` is the number of HTTP requests in the app now."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], counter: RequestCount) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.counter.value += 1  # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.counter.value -= 1


class RequestCount:
    """A mutable count shared by a middleware and the app's handlers (one event loop: no lock)."""

    def __init__(self) -> None:
        self.value = 0
