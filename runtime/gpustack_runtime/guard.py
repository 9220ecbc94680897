"""The agent's front door: what every request passes before any route, parser or state sees it.

:class:`RequestGuard` is a pure ASGI middleware (so it runs before FastAPI reads a body):

1. the bearer token is checked from the headers alone, before one byte of the body is read: an
   unauthenticated client cannot make the agent buffer anything (a 300 MB unauthenticated PUT used to grow
   the agent to 933 MB);
2. the body is capped (``Content-Length`` over the cap is refused at once, a chunked body as soon as it
   passes the cap): 413;
3. a JSON body must be strict JSON (pydantic-core's parser, the one pydantic uses): ``NaN``, ``Infinity``
   and lone surrogates (``"\\ud800"``) are refused with 422 like any other malformed JSON, before FastAPI's
   lenient ``json.loads`` would accept them.

Validation errors are rendered without echoing the input back (:func:`render_validation_error`): an echoed
lone surrogate cannot be encoded, and an echoed 20 MB string is 20 MB of response.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterable
from typing import Any

import pydantic_core
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpustack_runtime.config import DEFAULT_MAX_BODY_BYTES

logger = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_ERRORS_RENDERED = 20


class StrictJSONResponse(JSONResponse):
    """ASCII-escaped JSON: any text, even one that is not valid Unicode, can be rendered."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def validation_errors(errors: Iterable[Any]) -> list[dict[str, Any]]:
    """FastAPI's error list without ``input`` and ``ctx`` (they echo what the client sent), at most 20."""
    rendered: list[dict[str, Any]] = []
    for error in errors:
        if len(rendered) >= MAX_ERRORS_RENDERED:
            break
        if not isinstance(error, dict):
            rendered.append({"msg": str(error)[:500]})
            continue
        rendered.append(
            {
                "type": _plain(error.get("type")),
                "loc": [_plain(part) for part in error.get("loc", ())],
                "msg": str(error.get("msg", ""))[:500],
            }
        )
    return rendered


async def render_validation_error(_: Request, error: Exception) -> StrictJSONResponse:
    assert isinstance(error, RequestValidationError)
    return StrictJSONResponse(status_code=422, content={"detail": validation_errors(error.errors())})


class RequestGuard:
    """Token first, then a capped, strictly parsed body. See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        public_paths: frozenset[str] = PUBLIC_PATHS,
    ) -> None:
        self.app = app
        self._expected = b"Bearer " + token.encode()
        self._max_body_bytes = max_body_bytes
        self._public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # the last of repeated headers wins, as in Starlette
        method = scope["method"]
        path = scope["path"]
        if path not in self._public_paths:
            refusal = self._refusal(headers.get(b"authorization"))
            if refusal is not None:
                logger.info("refused %s %s: %s", method, path, refusal)
                detail = (
                    "missing bearer token: send 'Authorization: Bearer <token>'"
                    if refusal == "no bearer token"
                    else "wrong bearer token"
                )
                await _answer(scope, send, 401, detail, {"WWW-Authenticate": "Bearer"}, receive_left=True)
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                declared_bytes = int(declared)
            except ValueError:
                await _answer(scope, send, 400, "Content-Length is not a number", receive_left=True)
                return
            if declared_bytes > self._max_body_bytes:
                await _answer(scope, send, 413, self._too_large(), receive_left=True)
                return
        if method not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body_bytes:
                await _answer(scope, send, 413, self._too_large(), receive_left=True)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and (content_type == b"application/json" or content_type.endswith(b"+json")):
            try:
                pydantic_core.from_json(body, allow_inf_nan=False)
            except ValueError as error:
                await _answer(
                    scope,
                    send,
                    422,
                    [{"type": "json_invalid", "loc": ["body"], "msg": f"JSON decode error: {str(error)[:300]}"}],
                )
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _refusal(self, authorization: bytes | None) -> str | None:
        if authorization is None or not authorization.lower().startswith(b"bearer "):
            return "no bearer token"
        candidate = b"Bearer " + authorization[len(b"bearer ") :].strip()
        if not hmac.compare_digest(candidate, self._expected):
            return "wrong bearer token"
        return None

    def _too_large(self) -> str:
        return f"the request body is larger than {self._max_body_bytes} bytes"


async def _answer(
    scope: Scope,
    send: Send,
    status: int,
    detail: Any,
    headers: dict[str, str] | None = None,
    *,
    receive_left: bool = False,
) -> None:
    """Send a JSON error. ``receive_left``: the body was not (fully) read, so the connection is closed after
    the answer instead of reading the rest of an unwanted body."""
    response = StrictJSONResponse(status_code=status, content={"detail": detail}, headers=headers)
    if receive_left:
        response.headers["Connection"] = "close"

    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)
