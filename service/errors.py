"""HTTP errors: the service's own error types, the mapping of domain errors (media decoding) to status
codes, the exception handlers that apply it, and the OpenAPI description of every error answer.

Only this module knows status codes for domain errors: the routes raise `ServiceError`s or let
`model.MediaError`s through, and the handlers answer `{"detail": str, "errors": [...] | null}`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.catalog.names import shown_name
from indexer.cluster.scatter import ShardUnavailable
from indexer.ingest.files import FileChanged, FileGone
from indexer.jobs.broker import PUBLISH_ERRORS
from indexer.jobs.task import disk_full
from model.media import (
    MediaError,
    MediaTimeoutError,
    MediaTooLongError,
    MediaTooShortError,
    NoUsableStreamError,
    UnreadableMediaError,
    UnsupportedMediaError,
)

log = logging.getLogger(__name__)


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error answer: a message, and for a validation error the offending fields."""

    detail: str
    errors: list[FieldError] | None = None


class ServiceError(Exception):
    """An error the API answers with `status_code` and the message as `detail`."""

    status_code = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail, self.headers = detail, headers


class BadRequest(ServiceError):
    status_code = 400


class Unauthorized(ServiceError):
    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": "ApiKey"})


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class RetryLater(ServiceError):
    """A refusal whose answer says when to try again (Retry-After, seconds)."""

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after_s)})


class TooManyAttempts(RetryLater):
    status_code = 429


class UnsupportedMedia(ServiceError):
    status_code = 415


class InvalidInput(ServiceError):
    status_code = 422


class Unavailable(ServiceError):
    status_code = 503


class Busy(RetryLater):
    status_code = 503


# Most specific first. 415: the bytes are no media we can read; 422: readable but unusable for the request.
MEDIA_STATUS: tuple[tuple[type[MediaError], int], ...] = (
    (UnreadableMediaError, 415),
    (UnsupportedMediaError, 415),
    (MediaTooLongError, 413),
    (NoUsableStreamError, 422),
    (MediaTooShortError, 422),
    (MediaTimeoutError, 422),
    (MediaError, 422),
)


def media_status(exc: MediaError) -> int:
    return next(status for kind, status in MEDIA_STATUS if isinstance(exc, kind))


def _answer(
    status: int, detail: str, headers: dict[str, str] | None = None, errors: list | None = None
) -> JSONResponse:
    """Every error answer; the detail may name a file as it was sent: its control and bidi characters are shown as
    `\\uXXXX` (`indexer.catalog.names`), so it displays as what it is."""
    body = ErrorResponse(detail=shown_name(detail, None), errors=errors)
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def error_answer(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer for code outside the exception handlers (an ASGI middleware answering by itself)."""
    return _answer(status, detail, headers)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return _answer(exc.status_code, exc.detail, exc.headers)


async def _media_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MediaError)
    return _answer(media_status(exc), str(exc))


async def _file_error(_: Request, exc: Exception) -> JSONResponse:
    """An indexed file gone (404) or replaced by something else, a link or other content (409)."""
    return _answer(409 if isinstance(exc, FileChanged) else 404, str(exc))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _answer(exc.status_code, str(exc.detail), dict(exc.headers) if exc.headers else None)


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    """Location, message and type of each error; never the input (it may be binary or huge)."""
    return [
        FieldError(
            loc=[p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            msg=str(e.get("msg", "")),
            type=str(e.get("type", "")),
        )
        for e in exc.errors()
    ]


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc)
    summary = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors[:5]) or "invalid request"
    return _answer(422, summary, errors=[e.model_dump() for e in errors])


def _retry_after(request: Request) -> dict[str, str]:
    config = getattr(request.app.state, "config", None)
    return {"Retry-After": str(getattr(config, "retry_after_s", 1))}


async def _infrastructure_error(request: Request, exc: Exception) -> JSONResponse:
    """The database, the broker or the disk failing: 507 for a full disk, else 503 with Retry-After (the
    service recovers by itself once they are back: connections are checked before use)."""
    if disk_full(exc):
        log.error("%s %s: the disk is full: %s", request.method, request.url.path, exc)
        return _answer(507, "the server's disk is full: nothing was stored; retry once space is freed")
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
        return await _unexpected(request, exc)
    what = "database" if isinstance(exc, SQLAlchemyError) else "queue (broker)"
    log.warning("%s %s: the %s is unreachable: %s", request.method, request.url.path, what, exc)
    return _answer(503, f"the {what} is unreachable; retry later", _retry_after(request))


async def _shard_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A shard none of whose replicas answered: 503 naming it, with Retry-After (Ray restarts its replicas);
    never an answer without that shard's videos."""
    assert isinstance(exc, ShardUnavailable)
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return _answer(503, str(exc), {"Retry-After": str(exc.retry_after_s)})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _answer(500, f"internal error ({type(exc).__name__}); the server's log has the details")


INFRASTRUCTURE_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
    *PUBLISH_ERRORS,  # the broker's (kombu's, redis') errors, and OSError (a full disk among them)
)


class CatchAll:
    """Any exception no handler took becomes a JSON 500 here, the connection kept: Starlette's own error
    middleware re-raises after answering and uvicorn then closes the connection, so the client's next request
    on it would meet a reset."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            response = await _unexpected(Request(scope), exc)
            await response(scope, receive, send)


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(MediaError, _media_error)
    app.add_exception_handler(FileGone, _file_error)
    app.add_exception_handler(FileChanged, _file_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for kind in INFRASTRUCTURE_ERRORS:
        app.add_exception_handler(kind, _infrastructure_error)
    app.add_exception_handler(ShardUnavailable, _shard_unavailable)


DESCRIPTIONS = {
    400: "Malformed request body",
    401: "Missing API key (X-API-Key)",
    403: "Wrong API key, or a path outside the media roots (the answer names the path as given, never the roots)",
    404: "Unknown id",
    409: "The indexed file was replaced (a link or other content now stands at its path; the answer names the "
    "video, never a path): index it again",
    413: "Request body or media over the configured limit",
    415: "Not a media file the decoder can read (empty, corrupt, truncated, text; a still image as audio)",
    422: "Invalid parameters, or media that is readable but unusable (no audio/video track, too short)",
    429: "Too many wrong API keys from this address (retry after Retry-After seconds)",
    503: "Too many inferences at once, the database or queue unreachable, or a shard of the index with no live "
    "replica (retry after Retry-After seconds)",
    507: "The server's disk is full",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes (422 always: every route validates its input)."""
    wanted = sorted(set(codes) | {422})
    out: dict[int | str, dict[str, Any]] = {c: {"model": ErrorResponse, "description": DESCRIPTIONS[c]} for c in wanted}
    for code in {503, 429} & out.keys():
        out[code]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}}
    if 401 in out:
        out[401]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out
