"""Who the caller is, for the Provenance the sidecar writes (SPEC §5.1).

:class:`CallerVerifier` accepts a caller as *verified* only when its bearer token is a JWT whose
signature checks out against the administrator's JWKS; anything else is recorded as unverified
with a reason, never as an identity taken on the token's word. Access control is not decided
here: the caller's own token still goes to the upstream for the reads that stand for permission.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
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
from joserfc.jwk import Key, KeySet, import_key

from plugin.config import ConfigError, Settings
from plugin.identity import (
    BEARER,
    DEFAULT_TIMEOUT,
    Clock,
    SessionSource,
    Timeout,
    json_object,
    no_netrc,
    session_getter,
)

logger = logging.getLogger(__name__)

CALLER_ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
"""Signature algorithms accepted on caller tokens. Never ``none`` and never ``HS*``: a shared
secret cannot come from a public JWKS, and accepting HMAC would let anyone who has the public
key forge tokens ("algorithm confusion")."""
CLOCK_LEEWAY_SECONDS = 60
"""Clock skew tolerated on caller tokens' ``exp``, ``nbf`` and ``iat``."""
JWKS_MIN_REFETCH_SECONDS = 30.0
"""At most one JWKS fetch per this interval for unknown key ids, and after a failed fetch: a
stream of tokens naming a made-up ``kid`` must not turn into a stream of JWKS requests."""
MAX_TOKEN_LENGTH = 16_384
"""Longer bearer values are not parsed (a JWT header is base64 JSON; parsing costs memory)."""


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
        timeout: Timeout = DEFAULT_TIMEOUT,
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
        self._session = session_getter(session)
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
        if scheme.lower() != BEARER:
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
                self.jwks_url, headers={"Accept": "application/json"}, timeout=self._timeout, auth=no_netrc
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
        body = json_object(response)
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
