"""The session cookie: POST /session trades the API key (X-API-Key) for an HttpOnly, SameSite=Strict cookie
that stands for it (what the page, its <img> posters and <video> media send; service/access.py); DELETE /session
drops it."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.access import SESSION_COOKIE, SESSION_TTL_S, check_key, client_of, session_token
from service.deps import EngineDep, KeyHeader, WrongKeysDep
from service.errors import BadRequest, responses

router = APIRouter(tags=["session"])
NO_CONTENT: dict[int | str, dict[str, Any]] = {
    204: {"description": "Set-Cookie: cavsync_session (HttpOnly, SameSite=Strict, Path=/)"}
}


def _https(request: Request) -> bool:
    """Secure cookies over https only: a plain-http instance (loopback, the tests) could not set them."""
    return request.url.scheme == "https"


@router.post(
    "/session", status_code=204, response_class=Response, responses={**NO_CONTENT, **responses(400, 401, 403, 429)}
)
def login(request: Request, engine: EngineDep, wrong: WrongKeysDep, key: KeyHeader = None) -> Response:
    """Open a session: with the right key in X-API-Key, the answer sets the `cavsync_session` cookie, valid for
    12 hours or until the key changes, accepted wherever the key is. 400 when the API has no key; 429 (with
    Retry-After) past CAVSYNC_WRONG_KEYS_PER_MINUTE wrong keys from one address, as on every route that takes it."""
    expected, now = engine.config.api_key, time.time()
    if expected is None:
        raise BadRequest("this API has no key (CAVSYNC_API_KEY is unset): no session is needed")
    needs = "send the API key as the X-API-Key header to open a session"
    check_key(expected, key, None, now, needs, wrong=wrong, client=client_of(request.scope))  # the cookie is no key
    response = Response(status_code=204)
    token = session_token(expected, now)
    response.set_cookie(
        SESSION_COOKIE, token, max_age=SESSION_TTL_S, path="/", secure=_https(request), httponly=True, samesite="strict"
    )
    return response


@router.delete("/session", status_code=204, response_class=Response, responses=NO_CONTENT)
def logout(request: Request) -> Response:
    """Close the session: the answer clears the cookie."""
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=_https(request), httponly=True, samesite="strict")
    return response
