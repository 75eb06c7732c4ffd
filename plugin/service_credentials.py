"""The sidecar's own credentials (SPEC §5.1): what it sends as ``Authorization`` on the reads
that decide and on every write.

A :class:`StaticCredentials` header for development, or :class:`SmartBackendCredentials` for
production: SMART Backend Services, i.e. the OAuth 2.0 ``client_credentials`` grant with a
signed JWT client assertion (``private_key_jwt``). The token is cached until shortly before it
expires, shared by all threads of a process, and dropped when the upstream answers 401 to it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from authlib.oauth2.rfc7523 import private_key_jwt_sign  # type: ignore[import-untyped]

from plugin.config import ConfigError, Settings
from plugin.identity import (
    BEARER,
    DEFAULT_TIMEOUT,
    MAX_DIAGNOSTICS,
    Clock,
    SessionSource,
    Timeout,
    json_object,
    no_netrc,
    session_getter,
)
from plugin.signing_keys import load_signing_key

logger = logging.getLogger(__name__)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 300
"""SMART: the assertion's ``exp`` is no more than five minutes in the future."""
DEFAULT_TOKEN_SECONDS = 300
"""Lifetime assumed when a token response carries no ``expires_in``."""
TOKEN_REFRESH_MARGIN_SECONDS = 30.0
"""A token is replaced this long (or 10 % of its lifetime, if less) before it expires, so a
request that starts with it does not reach the upstream with an expired token."""


class CredentialsUnavailable(Exception):
    """The sidecar could not obtain credentials of its own, so it cannot decide or write.

    ``status``/``code`` say how to answer the caller: 503 ``transient``, because nothing is
    wrong with the caller's request and the same request may work once the authorisation
    server is back. ``diagnostics`` names the token endpoint and the OAuth ``error`` it sent; it
    never contains the assertion, the key or a token.
    """

    status: int = 503
    code: str = "transient"

    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics


class ServiceCredentials(Protocol):
    """The sidecar's own ``Authorization``, for the reads that decide and for every write."""

    def authorization(self) -> str | None:
        """The header value to send now (``None``: send no ``Authorization``).

        May fetch a token; raises :class:`CredentialsUnavailable` when that fails.
        """
        ...

    def invalidate(self, header_value: str) -> None:
        """The upstream answered 401 to ``header_value``: forget it, so the next call fetches a
        new token. A no-op when a newer token has been cached meanwhile (another thread already
        replaced it), so a burst of 401s costs one fetch, not one each."""
        ...


@dataclass(frozen=True)
class StaticCredentials:
    """A fixed header set by the administrator (development, or a long-lived service token).

    ``None`` sends no ``Authorization`` at all, for an upstream that needs none. Left out of
    ``repr`` so a logged object never shows the secret.
    """

    header: str | None = field(repr=False)

    def authorization(self) -> str | None:
        return self.header

    def invalidate(self, header_value: str) -> None:
        """Nothing to refresh: a 401 to a fixed header is a configuration problem, reported by
        the request that got it."""


@dataclass(frozen=True)
class _Token:
    header: str
    """``Bearer <access token>``, exactly as sent (and as handed back to ``invalidate``)."""
    refresh_at: float
    """Clock time from which the token is no longer handed out."""


class _ProcessLocal:
    """Per-process state: after a fork (gunicorn ``--preload``) a child must not inherit a
    lock that some parent thread held at the moment of the fork. Each process therefore
    starts with a fresh lock, and fetches its own token."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.token: _Token | None = None
        self.fetches_done = 0
        """Token requests finished (either way); tells a waiting thread whether one ended while
        it waited."""
        self.failure: str | None = None
        """Diagnostics of the last token request, if it failed."""


class SmartBackendCredentials:
    """SMART Backend Services: an access token for the sidecar itself, fetched with the OAuth
    2.0 ``client_credentials`` grant and a ``private_key_jwt`` client assertion.

    The token is cached until ``expires_in`` minus a margin (30 s or 10 % of the lifetime,
    whichever is smaller; 300 s assumed when the server states no lifetime). All threads share
    it: one thread fetches while the others wait for its result, so a cold start under load
    costs one token request. The same holds for a failure: threads that waited for a fetch
    that failed get its :class:`CredentialsUnavailable` rather than queueing one timeout each
    behind it. Failures are not cached beyond that: the next call tries again.

    ``session`` is a session or a function returning one (pass ``UpstreamClient.session`` to
    share its pool); without one each process makes its own. ``clock`` is wall-clock seconds,
    used for both the assertion's ``iat``/``exp`` and the token's expiry.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key: str,
        *,
        scope: str,
        key_id: str | None = None,
        algorithm: str = "RS384",
        session: SessionSource | None = None,
        clock: Clock = time.time,
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        parts = urlsplit(token_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the token URL must be an http(s) URL, not {token_url!r}")
        if not client_id.strip():
            raise ValueError("the client id is empty")
        if not scope.strip():
            raise ValueError("the scope is empty")
        self.token_url = token_url
        self.client_id = client_id
        self.scope = " ".join(scope.split())
        self.algorithm = algorithm
        self._key, self.key_id = load_signing_key(private_key, algorithm=algorithm, key_id=key_id)
        self._session = session_getter(session)
        self._clock = clock
        self._timeout = timeout
        self._local = _ProcessLocal()

    def __repr__(self) -> str:
        # Never the key, never the token.
        return (
            f"SmartBackendCredentials(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            f"key_id={self.key_id!r}, algorithm={self.algorithm!r}, scope={self.scope!r})"
        )

    def authorization(self) -> str:
        local = self._process_local()
        fetches_before = local.fetches_done
        with local.lock:
            token = local.token
            if token is not None and self._clock() < token.refresh_at:
                return token.header
            if local.failure is not None and local.fetches_done != fetches_before:
                # A fetch failed while this call waited for it: share its outcome.
                raise CredentialsUnavailable(local.failure)
            try:
                token = self._fetch(self._session())
            except CredentialsUnavailable as exc:
                local.failure = exc.diagnostics
                raise
            finally:
                local.fetches_done += 1
            local.failure = None
            local.token = token
            return token.header

    def invalidate(self, header_value: str) -> None:
        local = self._process_local()
        with local.lock:
            if local.token is not None and local.token.header == header_value:
                local.token = None
                logger.info(
                    "the upstream refused the sidecar's token; the next call fetches a new one",
                    extra={"token_url": self.token_url, "client_id": self.client_id},
                )

    def _process_local(self) -> _ProcessLocal:
        local = self._local
        if local.pid != os.getpid():
            # Two threads of a fresh child may both get here; the loser's state is dropped,
            # which costs at most one extra token request.
            local = _ProcessLocal()
            self._local = local
        return local

    def _assertion(self, now: float) -> str:
        """The signed client assertion (SMART Backend Services, "Request access token").

        authlib sets ``iss`` = ``sub`` = client id and ``aud`` = the token URL (RFC 7523 §3);
        ``exp`` is five minutes after ``iat``, and ``jti`` is fresh for every request so the
        server can refuse replays.
        """
        assertion: str = private_key_jwt_sign(
            self._key,
            client_id=self.client_id,
            token_endpoint=self.token_url,
            alg=self.algorithm,
            claims={"jti": str(uuid.uuid4())},
            header={"kid": self.key_id, "typ": "JWT"},
            issued_at=int(now),
            expires_in=ASSERTION_LIFETIME_SECONDS,
        )
        return assertion

    def _fetch(self, session: requests.Session) -> _Token:
        now = self._clock()
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self._assertion(now),
        }
        try:
            response = session.post(
                self.token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,  # never resend the assertion to wherever a redirect points
                auth=no_netrc,
            )
        except requests.Timeout:
            raise self._failure(f"the token endpoint {self.token_url} did not answer in time") from None
        except requests.RequestException as exc:
            raise self._failure(
                f"the token endpoint {self.token_url} is unreachable ({type(exc).__name__})"
            ) from None
        body = json_object(response)
        if not 200 <= response.status_code < 300:
            raise self._failure(
                f"the token endpoint {self.token_url} refused the sidecar's token request: "
                f"HTTP {response.status_code}{_oauth_error(body)}"
            )
        if body is None:
            raise self._failure(f"the token endpoint {self.token_url} did not answer with a JSON object")
        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token.strip():
            raise self._failure(f"the token endpoint {self.token_url} answered without an access_token")
        access_token = access_token.strip()
        if not all(" " < char <= "~" for char in access_token):
            # RFC 6750 token characters only: anything else would be a broken (or injected) header.
            raise self._failure(
                f"the token endpoint {self.token_url} issued an access_token that is not ASCII text"
            )
        token_type = body.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != BEARER:
            raise self._failure(
                f"the token endpoint {self.token_url} issued a token of type {token_type!r}, not bearer"
            )
        lifetime = _lifetime(body.get("expires_in"))
        granted = body.get("scope") if isinstance(body.get("scope"), str) else self.scope
        logger.info(
            "obtained a SMART backend services token",
            extra={
                "token_url": self.token_url,
                "client_id": self.client_id,
                "scope": granted,
                "expires_in": lifetime,
                "expires_at": datetime.fromtimestamp(now + lifetime, UTC).isoformat(timespec="seconds"),
            },
        )
        margin = min(TOKEN_REFRESH_MARGIN_SECONDS, lifetime / 10)
        return _Token(header=f"Bearer {access_token}", refresh_at=now + lifetime - margin)

    def _failure(self, diagnostics: str) -> CredentialsUnavailable:
        logger.warning(diagnostics, extra={"token_url": self.token_url, "client_id": self.client_id})
        return CredentialsUnavailable(diagnostics)


def _oauth_error(body: dict[str, Any] | None) -> str:
    """`` invalid_client: why`` from an RFC 6749 §5.2 error body; only those two fields, as
    anything else in an error page might echo the request (and with it the assertion)."""
    if body is None:
        return ""
    error = body.get("error")
    description = body.get("error_description")
    text = ""
    if isinstance(error, str) and error:
        text = f" {error}"
    if isinstance(description, str) and description:
        text += f": {description}" if text else f" {description}"
    return text[:MAX_DIAGNOSTICS]


def _lifetime(expires_in: object) -> float:
    """Seconds the token is good for; a missing or unusable ``expires_in`` counts as the SMART
    typical 300 s rather than "forever" or "already expired"."""
    if isinstance(expires_in, bool):
        return DEFAULT_TOKEN_SECONDS
    if isinstance(expires_in, str):
        try:
            expires_in = float(expires_in)
        except ValueError:
            return DEFAULT_TOKEN_SECONDS
    if isinstance(expires_in, int | float) and 0 < expires_in < float("inf"):
        return float(expires_in)
    return DEFAULT_TOKEN_SECONDS


def credentials_from_settings(settings: Settings, session: SessionSource | None = None) -> ServiceCredentials:
    """The sidecar's credentials as configured: SMART Backend Services when ``SMART_TOKEN_URL``
    is set, else the static ``UPSTREAM_AUTHORIZATION`` header (or none).

    The private key is parsed here, at start, so a wrong key stops the process with a
    :class:`~plugin.config.ConfigError` instead of failing the first booking. No token is
    fetched yet: the authorisation server may start after the sidecar.
    """
    if not settings.smart_token_url:
        return StaticCredentials(settings.upstream_authorization)
    try:
        return SmartBackendCredentials(
            settings.smart_token_url,
            settings.smart_client_id or "",
            settings.smart_private_key or "",
            scope=settings.smart_scope,
            key_id=settings.smart_key_id,
            algorithm=settings.smart_algorithm,
            session=session,
            timeout=settings.upstream_timeout,
        )
    except ValueError as exc:
        raise ConfigError(f"SMART Backend Services (SMART_PRIVATE_KEY_FILE, SMART_KEY_ID): {exc}") from None
