"""FastAPI dependencies: the engine, the index version (refreshed first), the API key of write routes."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyCookie, APIKeyHeader

from indexer.cluster.corpus import CorpusVersion
from service.access import KEY_HEADER, SESSION_COOKIE, WRITES_NEED, WrongKeys, check_key, client_of
from service.engine import Engine


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


async def current_version(engine: EngineDep) -> CorpusVersion | None:
    """The index version to read, reopened first when another process published a new one."""
    return await engine.current_version()


VersionDep = Annotated[CorpusVersion | None, Depends(current_version)]

api_key_header = APIKeyHeader(name=KEY_HEADER, auto_error=False, description="Needed when CAVSYNC_API_KEY is set.")
session_cookie = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="The session cookie POST /session sets: in place of X-API-Key."
)
KeyHeader = Annotated[str | None, Security(api_key_header)]
SessionCookie = Annotated[str | None, Security(session_cookie)]


def wrong_keys(request: Request) -> WrongKeys:
    """The app's count of wrong keys by client address (`service.access.WrongKeys`)."""
    return request.app.state.wrong_keys


WrongKeysDep = Annotated[WrongKeys, Depends(wrong_keys)]


def require_api_key(
    request: Request, engine: EngineDep, wrong: WrongKeysDep, key: KeyHeader = None, session: SessionCookie = None
) -> None:
    """Write routes (only when an API key is configured): 401 without the key or with a stale session, 403 with
    a wrong key, 429 after too many wrong ones from one address. The key comes as X-API-Key or as the session
    cookie (service/access.py)."""
    client = client_of(request.scope)
    check_key(engine.config.api_key, key, session, time.time(), WRITES_NEED, wrong=wrong, client=client)
