"""The FastAPI app: `create_app(config)`; its lifespan loads the model and the index version once.

Requests share one `Engine` (service/engine.py). Model and search work runs in worker threads, at
most `max_concurrent_inferences` at once. The request body limit (`max_upload_bytes`) is enforced
while the body streams in: a Content-Length over it is refused before anything is read, and a body
without one is cut off (413) as soon as the bytes received pass it; both answer JSON as every error.

    uvicorn --factory cavsync.app:create_app   # or `cavsync serve`: the config from the CAVSYNC_* settings
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.cluster.scatter import Searcher
from indexer.jobs.broker import Broker
from indexer.jobs.supervisor import Supervisor
from service.access import KeyGate, WrongKeys
from service.config import ServiceConfig
from service.csrf import CrossSiteGuard
from service.engine import Engine
from service.errors import CatchAll, error_answer, install_handlers
from service.headers import SecurityHeaders
from service.metrics import Metrics, MetricsMiddleware
from service.routes import catalog, jobs, search, session, system, web
from service.schemas import MAX_QUERY_TOKENS

log = logging.getLogger(__name__)

DESCRIPTION = """Audio-visual search with CAV-MAE Sync: find the videos (and the moment) that sound like a
sound or look like pictures, and where in a frame a sound comes from. Errors are JSON
`{"detail": "...", "errors": [...] | null}`: 415 for files the decoder cannot read, 422 for readable
media that does not fit the request (no audio track, under 1 s), 413 over the size or duration limits,
503 with Retry-After when every inference slot is busy."""


# Request bodies whose fields come in exclusive pairs: exactly one of each pair (an upload or an indexed video).
EXCLUSIVE_FIELDS = {
    "/search/audio-to-video": [("file", "video_id")],
    "/search/video-to-audio": [("file", "video_id")],
    "/localize": [("image", "video_id"), ("audio", "audio_video_id")],
}


def _not_null(field: dict[str, Any]) -> None:
    """An optional multipart field is left out, never sent as null: drop FastAPI's `{"type": "null"}`."""
    options = [o for o in field.pop("anyOf", []) if o != {"type": "null"}]
    if len(options) == 1:
        field.update(options[0])
    elif options:
        field["anyOf"] = options


def openapi_with_exclusive_fields(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, made precise for multipart bodies: optional fields are not nullable, and `oneOf`
    rules say which fields exclude each other."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = FastAPI.openapi(app)  # cached on the app: patched once, in place
    components = schema["components"]["schemas"]
    for path, pairs in EXCLUSIVE_FIELDS.items():
        body = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        target = components[body["$ref"].rsplit("/", 1)[-1]]
        for field in target["properties"].values():
            _not_null(field)
        target["allOf"] = [{"oneOf": [{"required": [a]}, {"required": [b]}]} for a, b in pairs]
    return schema


TOKENS_PATH = "/search/tokens"
BYTES_PER_FLOAT = 32  # the longest JSON float (-1.2345678901234567e-05) and its separator, rounded up


def tokens_body_limit(embed_dim: int) -> int:
    """The largest body a valid /search/tokens query can need: MAX_QUERY_TOKENS rows of `embed_dim` floats."""
    return MAX_QUERY_TOKENS * embed_dim * BYTES_PER_FLOAT + 4096


class TokensBodyLimit:
    """POST /search/tokens: FastAPI parses and validates its JSON whole, on the event loop, so its body may be
    no bigger than the largest valid query (`tokens_body_limit` of the served model), nor than max_upload_bytes:
    413 on a Content-Length over it before anything is read, else as soon as the bytes received pass it."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app, self.max_upload_bytes = app, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = getattr(scope["app"].state, "engine", None) if scope["type"] == "http" else None
        if engine is None or scope["path"] != TOKENS_PATH:
            await self.app(scope, receive, send)
            return
        limit = min(self.max_upload_bytes, tokens_body_limit(engine.model.config.embed_dim))
        declared = Headers(scope=scope).get("content-length", "")
        received = 0

        async def limited() -> Message:  # the route re-raises an HTTPException met while reading the body
            nonlocal received
            if declared.isdigit() and int(declared) > limit:
                raise HTTPException(413, f"a {TOKENS_PATH} body may be {limit} bytes at most")
            message = await receive()
            received += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if received > limit:
                raise HTTPException(413, f"a {TOKENS_PATH} body may be {limit} bytes at most")
            return message

        await self.app(scope, limited, send)


class DeclaredBodyLimit:
    """A request whose Content-Length is over `max_upload_bytes` is answered 413 here, in JSON as every error,
    before any of it is read. It wraps the whole middleware stack: FastAPI's own body limit (which counts the
    bytes of a body without a Content-Length as they arrive, answered by our handlers) replaces any answer to
    a request it sees declared too long with its text/plain one."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app, self.max_upload_bytes = app, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = Headers(scope=scope).get("content-length", "") if scope["type"] == "http" else ""
        if declared.isdigit() and int(declared) > self.max_upload_bytes:
            detail = (
                f"the request body is {int(declared)} bytes; at most {self.max_upload_bytes} are accepted "
                "(CAVSYNC_MAX_UPLOAD_BYTES)"
            )
            await error_answer(413, detail, {"Connection": "close"})(scope, receive, send)
            return
        await self.app(scope, receive, send)


class HeadOnly:
    """A GET route's app answering HEAD: the GET answer's status and headers (its Content-Length included), no
    body. A FileResponse sees the HEAD method itself and reads nothing of its file."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def headers_only(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
            elif not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app(scope, receive, headers_only)


def allow_head(app: FastAPI, routers: list[APIRouter]) -> None:
    """HEAD wherever GET is routed (FastAPI routes GET only; Starlette's static files answer HEAD already): a
    HEAD twin of each GET route of `routers` (included without a prefix), outside the OpenAPI schema, which
    documents the GETs."""
    for route in [r for router in routers for r in router.routes]:
        if isinstance(route, APIRoute) and "GET" in (route.methods or ()):
            twin = Route(route.path, HeadOnly(route.app), methods=["HEAD"], name=f"{route.name}:head")
            twin.include_in_schema = False
            app.router.routes.append(twin)


def create_app(config: ServiceConfig, broker: Broker | None = None, searcher: Searcher | None = None) -> FastAPI:
    """The API over the model and data dir of `config`. Index jobs go through `broker` (built by the
    composition root for `config.broker_url`, which then needs one) or, without one, run in this process.
    Searches go through `searcher` (the composition root's `indexer.cluster.ray_serve.RaySearcher` for a cluster) or,
    without one, run in this process (`indexer.cluster.scatter.LocalSearcher`, every shard one after the other)."""
    if config.broker_url and broker is None:
        raise ValueError(
            f"broker_url={config.broker_url!r} but no broker: build the app with cavsync.app.create_app, "
            "or unset CAVSYNC_BROKER_URL to run index jobs in the API process"
        )
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await anyio.to_thread.run_sync(Engine.start, config, searcher)
        app.state.engine = engine
        app.state.jobs = Supervisor(config.jobs, engine.sessions, broker)
        await anyio.to_thread.run_sync(app.state.jobs.start)  # sweep, reconcile once, then every interval
        try:
            yield
        finally:
            app.state.jobs.close()
            engine.searcher.close()

    app = FastAPI(
        title="cavsync",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        max_body_size=config.max_upload_bytes,
        docs_url=None,  # served offline by routes/web.py, with Swagger UI's own files
        redoc_url=None,
    )
    app.state.config, app.state.metrics = config, metrics
    app.state.wrong_keys = WrongKeys(config.wrong_keys_per_minute)  # by address, on every route that takes the key
    app.openapi = lambda: openapi_with_exclusive_fields(app)  # type: ignore[method-assign]  # FastAPI's documented schema hook
    install_handlers(app)
    app.add_middleware(TokensBodyLimit, max_upload_bytes=config.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if config.api_access == "all":  # every route but /health, the page and the docs needs the key
        app.add_middleware(KeyGate, api_key=config.api_key, wrong=app.state.wrong_keys)
    app.add_middleware(CrossSiteGuard, cors_origins=config.cors_origins)  # before any key: forged writes refused
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(CatchAll)  # outermost of ours: an unhandled error is a JSON 500, the connection kept
    routers = [module.router for module in (search, catalog, jobs, system, session, web)]
    for router in routers:
        app.include_router(router)
    allow_head(app, routers)
    stack = app.build_middleware_stack  # DeclaredBodyLimit goes around all of it, FastAPI's body limit included,
    # and SecurityHeaders around that: every answer, a 413 or 500 made outside the routes too, carries its headers
    app.build_middleware_stack = lambda: SecurityHeaders(DeclaredBodyLimit(stack(), config.max_upload_bytes))  # type: ignore[method-assign]  # Starlette builds the stack with this method on first call
    web.mount_static(app)
    return app
