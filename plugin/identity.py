"""Who the sidecar is, and who the caller is (SPEC §5.1).

Two separate concerns live here because both are about identity on the wire:

* **Service credentials** -- what the sidecar sends as ``Authorization`` on the reads that decide
  and on every write. A :class:`StaticCredentials` header for development, or
  :class:`SmartBackendCredentials` for production: SMART Backend Services, i.e. the OAuth 2.0
  ``client_credentials`` grant with a signed JWT client assertion (``private_key_jwt``). The token
  is cached until shortly before it expires, shared by all threads of a process, and dropped when
  the upstream answers 401 to it.
* **Caller identity** -- who to name in the Provenance written with each transaction.
  :class:`CallerVerifier` accepts a caller as *verified* only when its bearer token is a JWT whose
  signature checks out against the administrator's JWKS; anything else is recorded as unverified
  with a reason, never as an identity taken on the token's word. Access control is not decided
  here: the caller's own token still goes to the upstream for the reads that stand for permission.

No JOSE is written by hand: assertions are signed with authlib's RFC 7523 helper and tokens are
verified with joserfc (the JOSE library authlib itself uses).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from authlib.oauth2.rfc7523 import private_key_jwt_sign  # type: ignore[import-untyped]
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    InvalidPayloadError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import ECKey, Key, KeySet, RSAKey, import_key

from plugin.config import ConfigError, Settings

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Wall-clock seconds since the epoch (``time.time``): JWT times are wall-clock times."""
Timeout = float | tuple[float, float]
SessionSource = requests.Session | Callable[[], requests.Session]
"""A session, or a function giving the session to use now -- such as
``UpstreamClient.session``, which makes a new one after a fork so no socket is shared."""

SMART_ALGORITHMS = ("RS384", "ES384")
"""Client assertion algorithms SMART Backend Services allows (servers must support both)."""
CALLER_ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
"""Signature algorithms accepted on caller tokens. Never ``none`` and never ``HS*``: a shared
secret cannot come from a public JWKS, and accepting HMAC would let anyone who has the public
key forge tokens ("algorithm confusion")."""
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 300
"""SMART: the assertion's ``exp`` is no more than five minutes in the future."""
DEFAULT_TOKEN_SECONDS = 300
"""Lifetime assumed when a token response carries no ``expires_in``."""
TOKEN_REFRESH_MARGIN_SECONDS = 30.0
"""A token is replaced this long (or 10 % of its lifetime, if less) before it expires, so a
request that starts with it does not reach the upstream with an expired token."""
CLOCK_LEEWAY_SECONDS = 60
"""Clock skew tolerated on caller tokens' ``exp``, ``nbf`` and ``iat``."""
JWKS_MIN_REFETCH_SECONDS = 30.0
"""At most one JWKS fetch per this interval for unknown key ids, and after a failed fetch: a
stream of tokens naming a made-up ``kid`` must not turn into a stream of JWKS requests."""
MAX_TOKEN_LENGTH = 16_384
"""Longer bearer values are not parsed (a JWT header is base64 JSON; parsing costs memory)."""

_DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 10.0)
_MAX_DIAGNOSTICS = 300
_BEARER = "bearer"


# --------------------------------------------------------------------------------------------
# Service credentials.


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


def load_private_key_text(path: str | os.PathLike[str]) -> str:
    """Read a private key file (PEM, JWK or JWKS text).

    Kept apart from parsing so configuration can say which *file* is unreadable, and the
    parser can say what is wrong with its *content*; neither message shows key material.
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the private key file {os.fspath(path)!r}: {exc}") from None


def load_signing_key(text: str, *, algorithm: str = "RS384", key_id: str | None = None) -> tuple[Key, str]:
    """Parse the sidecar's private key and settle the ``kid`` to announce with it.

    ``text`` is PEM (PKCS#8, PKCS#1 or SEC1), a JWK, or a JWKS. From a JWKS the key named
    ``key_id`` is taken, else the first private key that fits ``algorithm``. Returns the key and
    its kid: SMART requires a ``kid`` header, because the authorisation server picks the key out
    of the JWKS the client registered.

    Raises ``ValueError`` (without key material in the message) when the key cannot sign
    ``algorithm``: wrong type or curve, public only, or no kid available.
    """
    if algorithm not in SMART_ALGORITHMS:
        raise ValueError(f"the algorithm must be one of {', '.join(SMART_ALGORITHMS)}, not {algorithm!r}")
    stripped = text.strip()
    if not stripped:
        raise ValueError("the private key is empty")
    if stripped.startswith("{"):
        try:
            document = json.loads(stripped)
        except ValueError:
            raise ValueError("the private key looks like JSON but does not parse as JSON") from None
        if not isinstance(document, dict):
            raise ValueError("the private key JSON must be a JWK or a JWKS object")
        if "keys" in document:
            key = _key_from_jwks(document, algorithm, key_id)
        else:
            key = _import_jwk(document)
            if key_id is not None and key.kid is not None and key.kid != key_id:
                raise ValueError(f"the key id {key_id!r} does not match the JWK's kid {key.kid!r}")
    else:
        try:
            key = import_key(stripped, "EC" if algorithm.startswith("ES") else "RSA")
        except (JoseError, ValueError, TypeError):
            raise ValueError(
                f"the private key is not an unencrypted PEM {_key_kind(algorithm)} private key"
            ) from None
    _check_signing_key(key, algorithm)
    kid = key_id or key.kid
    if not kid:
        raise ValueError(
            "no key id: set one, or use a JWK that carries a kid (SMART requires the kid header)"
        )
    return key, kid


def _import_jwk(data: dict[str, Any]) -> Key:
    try:
        return import_key(data)
    except (JoseError, ValueError, TypeError, KeyError):
        raise ValueError("the private key JWK is not a usable key") from None


def _key_from_jwks(document: dict[str, Any], algorithm: str, key_id: str | None) -> Key:
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the private key JWKS has no 'keys' list")
    candidates = [entry for entry in entries if isinstance(entry, dict)]
    if key_id is not None:
        named = [entry for entry in candidates if entry.get("kid") == key_id]
        if not named:
            raise ValueError(f"the private key JWKS has no key with kid {key_id!r}")
        return _import_jwk(named[0])
    for entry in candidates:
        try:
            key = import_key(entry)
            _check_signing_key(key, algorithm)
        except (JoseError, ValueError, TypeError, KeyError):
            continue
        return key
    raise ValueError(f"the private key JWKS has no {_key_kind(algorithm)} private key")


def _key_kind(algorithm: str) -> str:
    return "EC P-384" if algorithm == "ES384" else "RSA"


def _check_signing_key(key: Key, algorithm: str) -> None:
    if algorithm.startswith("RS"):
        fits = isinstance(key, RSAKey)
    else:
        fits = isinstance(key, ECKey) and key.get("crv") == "P-384"
    if not fits:
        raise ValueError(f"{algorithm} needs an {_key_kind(algorithm)} key, not a {key.key_type} key")
    if not key.is_private:
        raise ValueError("the key is a public key; the sidecar needs its private key to sign")
    try:
        key.check_alg(algorithm)
        key.check_use("sig")
    except JoseError as exc:
        raise ValueError(f"the key may not be used for {algorithm} signatures: {exc}") from None


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


class _PerProcessSession:
    """A ``requests.Session`` of this module's own, made anew in each process, so a forked
    worker never shares its parent's sockets."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._session: requests.Session | None = None

    def __call__(self) -> requests.Session:
        if self._session is None or self._pid != os.getpid():
            # Two threads of a fresh child may both get here: one session is then dropped.
            self._session = requests.Session()
            self._pid = os.getpid()
        return self._session


def _session_getter(source: SessionSource | None) -> Callable[[], requests.Session]:
    if source is None:
        return _PerProcessSession()
    if isinstance(source, requests.Session):
        return lambda: source
    return source


def _no_netrc(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An explicit no-op auth: ``requests`` would otherwise add ``~/.netrc`` credentials to a
    request that carries none."""
    return request


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
        timeout: Timeout = _DEFAULT_TIMEOUT,
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
        self._session = _session_getter(session)
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
                auth=_no_netrc,
            )
        except requests.Timeout:
            raise self._failure(f"the token endpoint {self.token_url} did not answer in time") from None
        except requests.RequestException as exc:
            raise self._failure(
                f"the token endpoint {self.token_url} is unreachable ({type(exc).__name__})"
            ) from None
        body = _json_object(response)
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
        if not isinstance(token_type, str) or token_type.lower() != _BEARER:
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


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


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
    return text[:_MAX_DIAGNOSTICS]


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


# --------------------------------------------------------------------------------------------
# Caller identity.


@dataclass(frozen=True)
class Caller:
    """Who made the request, as far as the sidecar can tell, for the Provenance it writes.

    ``subject``, ``issuer`` and ``client_id`` are set only when ``verified``: claims of a token
    whose signature did not check out are anyone's say-so and are not recorded as identity.
    ``reason`` says why a caller is unverified: "no bearer token", "not a bearer token",
    "no JWKS configured", "not a JWT", "algorithm '<alg>' not accepted", "JWKS unreachable",
    "JWKS unusable", "unknown key id", "signature does not verify", "expired",
    "not yet valid", "issued in the future", "wrong issuer", "wrong audience",
    "missing claim <names>", "invalid claim <name>".
    """

    verified: bool
    subject: str | None = None
    issuer: str | None = None
    client_id: str | None = None
    """The OAuth client the token was issued to (``client_id`` claim, else ``azp``)."""
    reason: str = ""

    @classmethod
    def unverified(cls, reason: str) -> Caller:
        return cls(verified=False, reason=reason)


class _JwksUnavailable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CallerVerifier:
    """Checks a caller's bearer token against the administrator's JWKS.

    The JWKS is cached for ``cache_seconds``. A token naming a ``kid`` that is not in the cached
    set causes a refetch (the issuer rotated its keys), at most once per 30 s; a failed fetch is
    also not retried for 30 s, so an unreachable JWKS costs one timeout per 30 s, not one per
    request. Accepted: RS256, RS384, ES256, ES384 signatures; ``exp`` required; ``exp``, ``nbf``
    and ``iat`` with 60 s leeway; ``iss`` and ``aud`` checked when configured.

    :meth:`identify` never raises for a bad token. Safe to share between threads.
    """

    def __init__(
        self,
        jwks_url: str | None,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        session: SessionSource | None = None,
        clock: Clock = time.time,
        cache_seconds: float = 300,
        timeout: Timeout = _DEFAULT_TIMEOUT,
    ) -> None:
        if jwks_url is not None:
            parts = urlsplit(jwks_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"the JWKS URL must be an http(s) URL, not {jwks_url!r}")
        if cache_seconds <= 0:
            raise ValueError(f"cache_seconds must be > 0, not {cache_seconds!r}")
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.cache_seconds = cache_seconds
        self._session = _session_getter(session)
        self._clock = clock
        self._timeout = timeout
        # Not strict about header names: issuers add their own (x5t#S256, nonce, ...), and the
        # signature covers them anyway.
        self._registry = jws.JWSRegistry(algorithms=list(CALLER_ALGORITHMS), strict_check_header=False)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._failure = ""

    def identify(self, authorization_header: str | None) -> Caller:
        """The caller behind ``authorization_header``, verified or with the reason it is not."""
        if authorization_header is None or not authorization_header.strip():
            return Caller.unverified("no bearer token")
        scheme, _, credentials = authorization_header.strip().partition(" ")
        if scheme.lower() != _BEARER:
            return Caller.unverified("not a bearer token")
        token = credentials.strip()
        if not token:
            return Caller.unverified("no bearer token")
        if self.jwks_url is None:
            return Caller.unverified("no JWKS configured")
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            return Caller.unverified("not a JWT")
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, TypeError, AttributeError):
            return Caller.unverified("not a JWT")
        if not isinstance(header, dict):
            return Caller.unverified("not a JWT")
        alg = header.get("alg")
        if alg not in CALLER_ALGORITHMS:
            return Caller.unverified(f"algorithm {alg!r} not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return Caller.unverified("not a JWT")
        try:
            keys = self._keys_for(kid)
        except _JwksUnavailable as exc:
            return Caller.unverified(exc.reason)
        return self._verify(token, keys)

    def _verify(self, token: str, keys: KeySet) -> Caller:
        try:
            claims = jwt.decode(token, keys, registry=self._registry).claims
            self._claims_registry().validate(claims)
        except InvalidKeyIdError:
            return Caller.unverified("unknown key id")
        except BadSignatureError:
            return Caller.unverified("signature does not verify")
        except ExpiredTokenError:
            return Caller.unverified("expired")
        except MissingClaimError as exc:
            return Caller.unverified(f"missing claim {exc.claim}")
        except InvalidClaimError as exc:
            return Caller.unverified(_invalid_claim_reason(exc.claim))
        except InvalidPayloadError:
            return Caller.unverified("not a JWT")
        except JoseError as exc:
            # Key type does not fit the algorithm, bad header values, oversized parts...
            logger.debug("caller token refused: %s", exc, extra={"jose_error": exc.error})
            return Caller.unverified("signature does not verify")
        except (ValueError, TypeError, AttributeError):
            return Caller.unverified("not a JWT")
        client_id = claims.get("client_id")
        if not isinstance(client_id, str):
            client_id = claims.get("azp")
        return Caller(
            verified=True,
            subject=_text(claims.get("sub")),
            issuer=_text(claims.get("iss")),
            client_id=_text(client_id),
        )

    def _claims_registry(self) -> jwt.JWTClaimsRegistry:
        options: dict[str, jwt.ClaimsOption] = {"exp": {"essential": True}}
        if self.issuer is not None:
            options["iss"] = {"essential": True, "value": self.issuer}
        if self.audience is not None:
            options["aud"] = {"essential": True, "value": self.audience}
        return jwt.JWTClaimsRegistry(now=int(self._clock()), leeway=CLOCK_LEEWAY_SECONDS, **options)

    # JWKS cache ------------------------------------------------------------------------------

    def _keys_for(self, kid: str | None) -> KeySet:
        """The key set to verify a token naming ``kid``, fetching or refetching as the cache
        rules allow; raises :class:`_JwksUnavailable` with the Caller reason otherwise."""
        self._after_fork()
        with self._lock:
            now = self._clock()
            keys = self._keys
            if keys is None or self._fetched_at is None or now - self._fetched_at >= self.cache_seconds:
                keys = self._refresh(now)
            elif (
                kid is not None
                and not _has_kid(keys, kid)
                and now - self._fetched_at >= JWKS_MIN_REFETCH_SECONDS
            ):
                logger.info(
                    "caller token names an unknown key id; fetching the JWKS again",
                    extra={"jwks_url": self.jwks_url, "kid": kid},
                )
                keys = self._refresh(now)
            return keys

    def _refresh(self, now: float) -> KeySet:
        if self._failed_at is not None and now - self._failed_at < JWKS_MIN_REFETCH_SECONDS:
            raise _JwksUnavailable(self._failure)
        try:
            keys = self._fetch()
        except _JwksUnavailable as exc:
            # A failed refresh also drops the old set: keys the issuer no longer publishes are
            # not trusted on the strength of an older download.
            self._keys = None
            self._fetched_at = None
            self._failed_at = now
            self._failure = exc.reason
            raise
        self._keys = keys
        self._fetched_at = now
        self._failed_at = None
        return keys

    def _fetch(self) -> KeySet:
        assert self.jwks_url is not None
        try:
            response = self._session().get(
                self.jwks_url, headers={"Accept": "application/json"}, timeout=self._timeout, auth=_no_netrc
            )
        except requests.RequestException as exc:
            logger.warning(
                "JWKS unreachable: %s",
                type(exc).__name__,
                extra={"jwks_url": self.jwks_url},
            )
            raise _JwksUnavailable("JWKS unreachable") from None
        if response.status_code != 200:
            logger.warning(
                "JWKS unreachable: HTTP %d", response.status_code, extra={"jwks_url": self.jwks_url}
            )
            raise _JwksUnavailable("JWKS unreachable")
        body = _json_object(response)
        entries = body.get("keys") if body is not None else None
        if not isinstance(entries, list):
            logger.warning("JWKS unusable: not a JSON key set", extra={"jwks_url": self.jwks_url})
            raise _JwksUnavailable("JWKS unusable")
        keys = list(_verification_keys(entries))
        if not keys:
            logger.warning("JWKS unusable: no RSA or EC signing keys", extra={"jwks_url": self.jwks_url})
            raise _JwksUnavailable("JWKS unusable")
        key_set = KeySet(keys)
        logger.info(
            "fetched the caller JWKS",
            extra={"jwks_url": self.jwks_url, "kids": [key.kid for key in key_set]},
        )
        return key_set

    def _after_fork(self) -> None:
        """A forked child gets its own lock (see :class:`_ProcessLocal`); the keys, public
        data, are kept."""
        if self._pid != os.getpid():
            self._lock = threading.Lock()
            self._pid = os.getpid()


def _verification_keys(entries: Iterable[object]) -> Iterable[Key]:
    """The usable public signature keys of a JWKS. Unknown key types, encryption keys and
    symmetric keys are skipped (RFC 7517 §5), so one odd entry does not disable the rest."""
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC"):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            yield import_key(entry)
        except (JoseError, ValueError, TypeError, KeyError):
            logger.info("skipped an unusable JWKS entry", extra={"kid": entry.get("kid")})


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys)


def _invalid_claim_reason(claim: str) -> str:
    return {
        "iss": "wrong issuer",
        "aud": "wrong audience",
        "nbf": "not yet valid",
        "iat": "issued in the future",
    }.get(claim, f"invalid claim {claim}")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def verifier_from_settings(settings: Settings, session: SessionSource | None = None) -> CallerVerifier:
    """The caller verifier as configured (``CALLER_JWKS_URL``, ``CALLER_JWT_ISSUER``,
    ``CALLER_JWT_AUDIENCE``); without a JWKS URL every caller is recorded as unverified."""
    try:
        return CallerVerifier(
            settings.caller_jwks_url,
            issuer=settings.caller_jwt_issuer,
            audience=settings.caller_jwt_audience,
            session=session,
            # A JWKS is a small static document, and requests wait while it is refreshed:
            # a slow issuer must not hold them for the upstream's long read timeout.
            timeout=(settings.upstream_connect_timeout, min(settings.upstream_read_timeout, 10.0)),
        )
    except ValueError as exc:
        raise ConfigError(f"CALLER_JWKS_URL: {exc}") from None
