"""The HTTP client of ``kiki-events history``: GET requests to a server's history endpoints.

Standard library only (``urllib``). The bearer token comes from ``--token`` or the
``KIKI_EVENTS_TOKEN`` environment variable; it is sent as ``Authorization: Bearer …``
and never printed.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ...errors import KikiEventsError

__all__ = ["DEFAULT_URL", "TOKEN_ENV", "URL_ENV", "HistoryClient", "HistoryRequestError"]

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "KIKI_EVENTS_URL"
TOKEN_ENV = "KIKI_EVENTS_TOKEN"  # noqa: S105 - the name of a variable, not a secret
_TIMEOUT = 30.0

Params = Mapping[str, str | int | float | Sequence[str] | None]


class HistoryRequestError(KikiEventsError):
    """A history request failed: the server is unreachable or answered an error (its ``detail``)."""


class HistoryClient:
    """GETs JSON from the server at ``url`` (``token``: a bearer token, or ``None``)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = _TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise HistoryRequestError(f"--url must be an http(s) URL like {DEFAULT_URL}, got {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_args(cls, url: str | None, token: str | None) -> HistoryClient:
        """A client for ``--url`` (else ``KIKI_EVENTS_URL``, else :data:`DEFAULT_URL`) and ``--token``."""
        return cls(url or os.environ.get(URL_ENV) or DEFAULT_URL, token or os.environ.get(TOKEN_ENV) or None)

    def get(self, path: str, params: Params | None = None) -> Any:
        """The JSON body of ``GET path?params`` (``None`` values left out; lists repeat the parameter)."""
        query = {key: value for key, value in (params or {}).items() if value is not None}
        target = f"{self.url}{path}"
        if query:
            target += "?" + urllib.parse.urlencode(query, doseq=True)
        request = urllib.request.Request(target, headers={"Accept": "application/json"})  # noqa: S310 - http(s) only
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise HistoryRequestError(f"{exc.code}: {_detail(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HistoryRequestError(f"cannot reach {self.url}: {reason}") from None
        except ValueError:
            raise HistoryRequestError(f"{target} did not answer JSON") from None

    def pages(self, path: str, key: str, params: Params, total: int | None = None) -> Iterator[Any]:
        """Every item under ``key`` of the pages of ``path``, following cursors (at most ``total``)."""
        given = dict(params)
        count = 0
        while True:
            body = self.get(path, given)
            for item in body[key]:
                if total is not None and count >= total:
                    return
                count += 1
                yield item
            cursor = body.get("cursor")
            if cursor is None or (total is not None and count >= total):
                return
            given["cursor"] = cursor


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(error.read()).get("detail")
    except (ValueError, AttributeError, OSError):
        detail = None
    return str(detail) if detail else str(error.reason)
