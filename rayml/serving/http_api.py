"""The FastAPI object every route module decorates, its middlewares, error shapes and the bearer dependency.

Routes live by concern (:mod:`rayml.serving.app`: recommend, score, events; :mod:`rayml.serving.oip_routes`;
:mod:`rayml.serving.health_routes`) as methods of mixins of the one Serve deployment class. A replica sets
:data:`EDGE` from its config at start; the middlewares read it per request.
"""

# No `from __future__ import annotations`: FastAPI must see the real classes.

import json
import logging
import math
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from rayml.serving.auth import AuthError
from rayml.serving.config import RecommenderArgs
from rayml.serving.fast_routes import ROUTES, FastRoutes, Handler
from rayml.serving.http_guards import AccessLog, Admission, BodyLimit, InFlight, RequestCount

access_logger = logging.getLogger("ray.serve")

api = FastAPI(title="rayml recommender", version="0.1.0")
EDGE: dict[str, Any] = {  # this replica's edge settings, set from its args at start
    "max_body_bytes": RecommenderArgs.model_fields["max_body_bytes"].default,
    "access_log_sample": 0.0,
    "max_in_flight": 0,
    "retry_after_s": 1,
    "overload_in_flight": 0,
    "overload_hold_s": 0.0,
}
IN_FLIGHT = RequestCount()  # HTTP requests inside this replica now


# The app travels to replicas pickled, so the middlewares get module-level functions (pickled by reference,
# resolved in the replica's own module) rather than objects or lambdas (copied, and then never updated).
def _access_line(record: dict[str, Any]) -> None:
    access_logger.info("access %s", json.dumps(record, separators=(",", ":")))


def _max_body_bytes() -> int:
    return EDGE["max_body_bytes"]


def _access_log_sample() -> float:
    return EDGE["access_log_sample"]


def _in_flight() -> RequestCount:
    return IN_FLIGHT


def _admission() -> Admission:
    return Admission(EDGE["max_in_flight"], EDGE["retry_after_s"], EDGE["overload_in_flight"], EDGE["overload_hold_s"])


def _fast_routes() -> dict[tuple[str, str], Handler]:
    return ROUTES


def _exception_handlers() -> dict[Any, Any]:
    return api.exception_handlers


api.add_middleware(FastRoutes, handlers=_fast_routes, exception_handlers=_exception_handlers)  # first: innermost
api.add_middleware(BodyLimit, max_bytes=_max_body_bytes)
api.add_middleware(AccessLog, sample_rate=_access_log_sample, sink=_access_line)
api.add_middleware(InFlight, counter=_in_flight, limit=_admission)  # last: outermost, counts from the first byte

# The raw `Authorization` header. A plain header parameter, not a FastAPI security dependency (which costs about
# 5 % of a request here); the bearer scheme is declared in the OpenAPI schema by `document_security`.
Authorization = Annotated[str | None, Header(include_in_schema=False)]
BEARER_SCHEME = {"type": "http", "scheme": "bearer",
                 "description": "A token of the role the route needs: read, ingest or admin (admin ⊇ ingest ⊇ read)."}


SECURED: dict[str, Any] = {"security": [{"bearer": []}]}  # `openapi_extra` of a route that reads the Authorization header


def document_security(schema: dict[str, Any]) -> None:
    """Declare the bearer scheme the routes marked :data:`SECURED` refer to."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = BEARER_SCHEME


def _detail(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {
        "type": "object", "properties": {"detail": {}}, "required": ["detail"]}}}}


RETRY = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _detail("Malformed request."),
    401: {**_detail("Missing or malformed bearer token."),
          "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}},
    403: _detail("The token lacks the role this route needs."),
    404: _detail("Unknown user, model or version."),
    409: _detail("Conflicts with the current state (e.g. a rollout is already running); the body shows it."),
    413: _detail("The body is larger than max_body_bytes."),
    422: _detail("A field failed validation; detail[].loc names it."),
    429: {**_detail("Over capacity: retry after Retry-After seconds."), "headers": RETRY},
    503: {**_detail("A dependency is down or the replica is over capacity."), "headers": RETRY},
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the statuses a route can return besides 200."""
    return {code: ERRORS[code] for code in codes}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}


OIP_ERRORS: dict[int, dict[str, Any]] = {  # the protocol's own error shape, {"error": "..."}
    400: _error("Malformed tensor or header; the message starts with the field."),
    404: _error("Unknown model or version."),
    503: {**_error("The model's deployment is unavailable or a dependency is down."), "headers": RETRY},
}


def oip_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Like :func:`responses`, with OIP's ``{"error"}`` body for the statuses the protocol defines."""
    return {code: OIP_ERRORS.get(code, ERRORS[code]) for code in codes}


def exact_int64(node: Any) -> Any:
    """The schema with float-rendered int64 bounds (``9.223372036854776e+18``, which admits ids beyond int64) put
    back as exact integers."""
    if isinstance(node, dict):
        out = {key: exact_int64(value) for key, value in node.items()}
        if out.get("type") == "integer":
            for key in ("maximum", "minimum"):
                if isinstance(out.get(key), float) and out[key].is_integer():
                    out[key] = MAX_INT64 if out[key] >= float(MAX_INT64) else int(out[key])
        return out
    if isinstance(node, list):
        return [exact_int64(value) for value in node]
    return node


MAX_INT64 = 2**63 - 1


@api.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, made safe for inputs JSON cannot encode (``Infinity``/``NaN`` literals would make it a 500)."""
    return JSONResponse(status_code=422, content={"detail": _finite(jsonable_encoder(exc.errors()))})


@api.exception_handler(AuthError)
async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"detail": exc.detail}, headers=exc.headers)


def _finite(value):
    """``value`` with every non-finite float replaced by its name (strict JSON has no Infinity or NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def unavailable(detail: str, retry_after_s: int = 1) -> HTTPException:
    """503 with ``Retry-After``: a dependency is down; the client should come back."""
    return HTTPException(status_code=503, detail=detail, headers={"Retry-After": str(retry_after_s)})


def oip_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The Open Inference Protocol's error body: ``{"error": "..."}``."""
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)
