"""A pure ASGI shortcut past FastAPI's routing and dependency solving for the hottest route (``POST /recommend``).

FastAPI's router walks the included routers, solves each parameter's dependency and wraps the handler in two
exception layers: on this 2-core box that is about as much CPU as ranking the request itself. :class:`FastRoutes`
sits inside the edge middlewares (body limit, in-flight count, access log still apply) and hands a registered
``(method, path)`` straight to its handler with the raw body.

The shortcut only ever takes the plain case. A handler returns ``None`` for anything it does not take (a body
that is not valid JSON for the model, another content type, …), and the request then goes through FastAPI
unchanged, with its body replayed: so every refusal keeps FastAPI's status and body (e.g. the 422 naming the
field), and the route stays in the OpenAPI schema as declared. An exception a handler raises is answered by the
app's own exception handlers (``HTTPException``, ``AuthError``, …), as FastAPI would; any other propagates to the
server-error middleware, a 500 as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, bytes], Awaitable[Response | None]]

# (method, path inside the app) -> handler. A replica registers its bound methods at start (the app object is
# shared by the module, the handlers belong to the one deployment instance of this process).
ROUTES: dict[tuple[str, str], Handler] = {}


def route_path(scope: Scope) -> str:
    """The path inside the app: a Serve ``route_prefix`` arrives as ``root_path`` and is part of ``path``."""
    path, root = scope["path"], scope.get("root_path") or ""
    return (path[len(root):] or "/") if root and path.startswith(root) else path


def is_json(scope: Scope) -> bool:
    """``Content-Type: application/json`` (any parameters): the only bodies the shortcut parses."""
    for name, value in scope.get("headers") or ():
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def header(scope: Scope, wanted: bytes) -> str | None:
    """One request header, decoded as latin-1 (what Starlette does), or None."""
    for name, value in scope.get("headers") or ():
        if name == wanted:
            return value.decode("latin-1")
    return None


class FastRoutes:
    """``app.add_middleware(FastRoutes, handlers=get, exception_handlers=get_handlers)``; add it before the edge
    middlewares so they wrap it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 handlers: Callable[[], dict[tuple[str, str], Handler]],
                 exception_handlers: Callable[[], dict[Any, Callable[..., Any]]]) -> None:
        self.app = app
        self.handlers = handlers
        self.exception_handlers = exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handlers().get((scope.get("method", ""), route_path(scope))) if scope["type"] == "http" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:  # the body limit outside has bounded it already
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        if messages[-1]["type"] != "http.request":  # the client went away mid-body
            await self.app(scope, _replay(messages, receive), send)
            return
        body = b"".join(m.get("body", b"") for m in messages)
        try:
            response = await handler(scope, body)
        except Exception as exc:
            answer = self._handler_for(exc)
            if answer is None:
                raise
            response = await answer(Request(scope), exc)
        if response is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable[..., Any] | None:
        handlers = self.exception_handlers()
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
