"""Remote scorers: reward functions behind an HTTP (JSON) endpoint the service's owner configured.

A remote scorer is named in the owner's ``functions_file`` with its URL and credentials; a job
names it like any other function and never carries an address (DESIGN.md section 6: a service
dials only the peers its owner configured). Each call POSTs one item::

    {"function": "<name>", "prompt": "...", "completion": "...", "prompt_ids": [...],
     "completion_ids": [...], "reference": "...", "args": {...}}

with ``Authorization: Bearer <token>`` when a token is configured (from an environment variable
or a file, never written in the functions file), and expects ``200`` with ``{"score": number,
"sub_scores": {...}?, "detail": "..."?}`` (or a bare number).

Each attempt has a deadline (``timeout_s``); connection errors, timeouts, 429 and 5xx are retried
up to ``retries`` times with exponential backoff (a ``Retry-After`` is honoured up to the
backoff cap); other 4xx and malformed answers are not retried. A call that still fails raises
``RemoteError`` with the last reason, which fails the item; the queue redelivers it and
dead-letters it with that reason after ``max_deliveries``.

The client is the standard library's ``urllib`` (one request per item, no new dependency); a
gRPC variant is not built. This module knows nothing about jobs or weights.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from services.reward.functions.invoke import coerce

logger = logging.getLogger(__name__)

_MAX_BODY = 1_000_000


class RemoteError(Exception):
    """The remote scorer did not give a score; the message says why (after retries)."""


@dataclass(frozen=True)
class RemoteScorer:
    name: str
    url: str
    token_env: str = ""
    token_file: str = ""
    ca_file: str = ""
    timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 5.0
    description: str = ""
    stats: dict = field(default_factory=lambda: {"attempts": 0, "retries": 0}, compare=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {self.url!r} must be an http:// or https:// URL with a host")
        if self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0:
            raise ValueError("timeout_s must be > 0, retries and backoff_s >= 0")
        if self.token_env and self.token_env not in os.environ:
            raise ValueError(f"token_env {self.token_env}: the variable is not set")
        if self.token_file and not Path(self.token_file).is_file():
            raise ValueError(f"token_file {self.token_file}: no such file")
        if self.ca_file and not Path(self.ca_file).is_file():
            raise ValueError(f"ca_file {self.ca_file}: no such file")

    @property
    def host(self) -> str:
        """Where it points, for listings (no path, query or credentials)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")

    @property
    def deadline_s(self) -> float:
        """The longest a call can take: every attempt's timeout plus the backoffs."""
        waits = sum(min(self.backoff_s * 2**i, self.max_backoff_s) for i in range(self.retries))
        return self.timeout_s * (self.retries + 1) + waits

    def _token(self) -> str:
        if self.token_env:
            return os.environ.get(self.token_env, "")
        if self.token_file:
            return Path(self.token_file).read_text(encoding="utf-8").strip()
        return ""

    def _request(self, body: bytes) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

    def _attempt(self, body: bytes) -> tuple[dict | None, str, float | None]:
        """(result, "", _) on success; (None, reason, retry_after or None) when retryable;
        raises ``RemoteError`` when retrying cannot help."""
        context = ssl.create_default_context(cafile=self.ca_file or None)
        try:
            with urllib.request.urlopen(
                self._request(body), timeout=self.timeout_s, context=context
            ) as resp:
                raw = resp.read(_MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            text = exc.read(300).decode("utf-8", "replace").strip()
            reason = f"HTTP {exc.code} from {self.host}" + (f": {text}" if text else "")
            if exc.code == 429 or exc.code >= 500:
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                try:
                    wait = float(retry_after) if retry_after else None
                except ValueError:
                    wait = None
                return None, reason, wait
            raise RemoteError(reason) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
            cause = getattr(exc, "reason", exc)
            if isinstance(cause, TimeoutError) or "timed out" in str(cause):
                return None, f"no answer from {self.host} within {self.timeout_s:g} s", None
            return None, f"cannot reach {self.host}: {cause}", None
        if len(raw) > _MAX_BODY:
            raise RemoteError(f"{self.host} answered more than {_MAX_BODY} bytes")
        try:
            data = json.loads(raw)
            return coerce(data), "", None
        except (ValueError, TypeError) as exc:
            raise RemoteError(
                f"{self.host} answered something that is not a score: {exc}"
            ) from None

    def score(self, payload: dict) -> dict:
        body = json.dumps({"function": self.name, **payload}).encode()
        reason = ""
        for attempt in range(self.retries + 1):
            self.stats["attempts"] += 1
            result, reason, retry_after = self._attempt(body)
            if result is not None:
                return result
            if attempt == self.retries:
                break
            self.stats["retries"] += 1
            wait = min(self.backoff_s * 2**attempt, self.max_backoff_s)
            if retry_after is not None:
                wait = min(max(wait, retry_after), self.max_backoff_s)
            logger.info("remote scorer %s: %s; retrying in %.2f s", self.name, reason, wait)
            time.sleep(wait)
        raise RemoteError(f"{reason} (after {self.retries + 1} attempts)")
