"""FastAPI dependencies: the engine, the index version (refreshed first), the API key of write routes."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from indexer.sharding import CorpusVersion
from service.engine import Engine
from service.errors import Forbidden, Unauthorized


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


async def current_version(engine: EngineDep) -> CorpusVersion | None:
    """The index version to read, reopened first when another process published a new one."""
    return await engine.current_version()


VersionDep = Annotated[CorpusVersion | None, Depends(current_version)]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when CAVSYNC_API_KEY is set.")


def require_api_key(engine: EngineDep, key: Annotated[str | None, Security(api_key_header)] = None) -> None:
    """Write routes: 401 without the key, 403 with a wrong one (only when an API key is configured)."""
    expected = engine.config.api_key
    if expected is None:
        return
    if not key:
        raise Unauthorized("this endpoint needs the X-API-Key header")
    sent = key.encode("latin-1", "replace")  # the header's bytes: Starlette decodes headers as latin-1
    if not secrets.compare_digest(sent, expected.get_secret_value().encode("utf-8")):
        raise Forbidden("wrong API key")
