"""Bearer-token authentication for every endpoint except ``/healthz``.

The token is compared in constant time (:func:`hmac.compare_digest`) on bytes, so a non-ASCII guess cannot
raise, and it is never logged: the check only ever logs that a request was refused and why (missing or wrong).
"""

from __future__ import annotations

import hmac
import logging

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

logger = logging.getLogger(__name__)

# auto_error=False: we answer 401 with our own message and the WWW-Authenticate header ourselves; the scheme
# object also declares the bearer security scheme in the OpenAPI document.
bearer_scheme = HTTPBearer(auto_error=False, description="The token from the agent's --token-file.")

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}


class TokenCheck:
    """A FastAPI dependency that admits requests carrying ``Authorization: Bearer <token>``."""

    def __init__(self, token: SecretStr) -> None:
        self._expected = token.get_secret_value().encode()

    def matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._expected)

    async def __call__(  # async: a plain function would be run in FastAPI's thread pool, a hop per request
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),  # noqa: B008
    ) -> None:
        if credentials is None:
            logger.info("refused %s %s: no bearer token", request.method, request.url.path)
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing bearer token: send 'Authorization: Bearer <token>'",
                headers=UNAUTHORIZED_HEADERS,
            )
        if not self.matches(credentials.credentials):
            logger.info("refused %s %s: wrong bearer token", request.method, request.url.path)
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="wrong bearer token",
                headers=UNAUTHORIZED_HEADERS,
            )
