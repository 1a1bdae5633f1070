"""The authentication hook.

Give :func:`~kiki_events.server.app.create_app` (or ``create_router``) any FastAPI
dependency that returns a *principal* (a string naming the caller) or ``None``.
With a hook configured, a request without a principal gets 401, and runs and
threads are visible only to the principal that started them: anyone else gets
404, as if they did not exist. Without a hook, everything is anonymous.

:func:`bearer_tokens` is a ready-made hook for static API tokens; ``create_app`` (and so
``kiki-events serve``) builds it from ``server.auth.bearer_tokens`` (principal → token)
when no hook is given.
"""

# No ``from __future__ import annotations`` here: FastAPI reads these
# annotations at runtime, and some name local dependencies.

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, TypeAlias

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import ArgumentTypeError
from .requests import refuse_repeated_query

__all__ = ["AuthDependency", "Principal", "bearer_tokens", "principal_dependency"]

Principal: TypeAlias = str | None
"""Who is calling; ``None`` when anonymous."""
AuthDependency: TypeAlias = Callable[..., Any]
"""A FastAPI dependency returning a principal (``str``) or ``None``."""


def principal_dependency(auth: AuthDependency | None) -> Callable[..., Awaitable[Principal]]:
    """The dependency endpoints use: anonymous without ``auth``, else 401 when it returns nothing.

    It also refuses a one-value query parameter given several times (422 naming it),
    which FastAPI would otherwise read as its last value.
    """
    if auth is None:

        async def anonymous(request: Request) -> Principal:
            refuse_repeated_query(request)
            return None

        return anonymous

    async def required(request: Request, principal: Annotated[Principal, Depends(auth)]) -> Principal:
        if not principal:
            raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
        if not isinstance(principal, str):
            raise ArgumentTypeError(f"the auth dependency must return a str or None, not {type(principal).__name__}")
        refuse_repeated_query(request)  # after the 401: a stranger learns nothing of the parameters
        return principal

    return required


def bearer_tokens(tokens: Mapping[str, str]) -> AuthDependency:
    """A hook accepting ``Authorization: Bearer <token>`` for the given token → principal map."""
    known = dict(tokens)
    scheme = HTTPBearer(auto_error=False)

    async def from_bearer(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)],
    ) -> Principal:
        if credentials is None:
            return None
        offered = credentials.credentials.encode()
        found: Principal = None
        # Compare against every token in constant time: no timing hints.
        for token, principal in known.items():
            if hmac.compare_digest(offered, token.encode()):
                found = principal
        return found

    return from_bearer
