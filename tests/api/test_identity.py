"""plugin.service_credentials and plugin.caller_identity against real little servers on 127.0.0.1 (SPEC §5.1).

The sidecar's own credentials are fetched from a real token endpoint that checks every client
assertion as a SMART Backend Services server would (tests/support/token_server.py); caller
tokens are verified against a real JWKS host. Time is a fake wall clock shared by client and
server, so expiry is tested without sleeping.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from plugin.caller_identity import Caller, CallerVerifier, verifier_from_settings
from plugin.config import ConfigError, Settings
from plugin.service_credentials import (
    CredentialsUnavailable,
    SmartBackendCredentials,
    StaticCredentials,
    credentials_from_settings,
)
from plugin.signing_keys import load_private_key_text, load_signing_key
from tests.support.token_server import (
    JWT_BEARER,
    JwksServer,
    KeyPair,
    TokenServer,
    closed_port_url,
    generate_key_pair,
    hmac_token,
    sign_token,
    unsecured_token,
)

CLIENT_ID = "fanoni-sidecar"
SCOPE = "system/Slot.cruds system/Appointment.cruds system/Provenance.c"
ISSUER = "https://idp.example/realms/clinic"
AUDIENCE = "http://hapi.test/fhir"


class FakeClock:
    """Wall-clock seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def rsa_pair() -> KeyPair:
    return generate_key_pair("RS384", kid="sidecar-rsa")


@pytest.fixture(scope="module")
def ec_pair() -> KeyPair:
    return generate_key_pair("ES384", kid="sidecar-ec")


@pytest.fixture
def token_server(rsa_pair: KeyPair, ec_pair: KeyPair, clock: FakeClock) -> Iterator[TokenServer]:
    with TokenServer(CLIENT_ID, [rsa_pair.public_jwk, ec_pair.public_jwk], clock=clock) as server:
        yield server


def smart(url: str, pair: KeyPair, clock: Callable[[], float], **kwargs: Any) -> SmartBackendCredentials:
    options: dict[str, Any] = {"key_id": pair.kid, "algorithm": pair.algorithm, "scope": SCOPE}
    options.update(kwargs)
    return SmartBackendCredentials(
        url, CLIENT_ID, pair.private_pem, clock=clock, timeout=(2.0, 5.0), **options
    )


# --------------------------------------------------------------------------------------------
# Static credentials.


def test_static_credentials_send_the_configured_header_or_none() -> None:
    fixed = StaticCredentials("Bearer admin-token")
    assert fixed.authorization() == "Bearer admin-token"
    fixed.invalidate("Bearer admin-token")  # nothing to refresh
    assert fixed.authorization() == "Bearer admin-token"
    assert StaticCredentials(None).authorization() is None
    assert "admin-token" not in repr(fixed)


# --------------------------------------------------------------------------------------------
# SMART Backend Services: getting a token.


def test_a_token_is_obtained_with_a_verified_client_assertion(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock
) -> None:
    credentials = smart(token_server.token_url, rsa_pair, clock)

    assert credentials.authorization() == "Bearer test-sidecar"
    assert (token_server.successes, token_server.failures) == (1, 0)


def test_the_assertion_and_form_are_what_smart_backend_services_asks_for(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock
) -> None:
    credentials = smart(token_server.token_url, rsa_pair, clock)
    credentials.authorization()
    credentials.invalidate("Bearer test-sidecar")
    credentials.authorization()

    first, second = token_server.assertions
    assert first.header == {"alg": "RS384", "kid": "sidecar-rsa", "typ": "JWT"}
    claims = first.claims
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == token_server.token_url
    assert claims["iat"] == int(clock.now)
    assert claims["exp"] - claims["iat"] == 300
    assert uuid.UUID(claims["jti"])
    assert second.claims["jti"] != claims["jti"], "every assertion needs its own jti"
    assert first.form["grant_type"] == "client_credentials"
    assert first.form["scope"] == SCOPE
    assert first.form["client_assertion_type"] == JWT_BEARER
    assert set(first.form) == {"grant_type", "scope", "client_assertion_type", "client_assertion"}


def test_es384_keys_work(token_server: TokenServer, ec_pair: KeyPair, clock: FakeClock) -> None:
    credentials = smart(token_server.token_url, ec_pair, clock)

    assert credentials.authorization() == "Bearer test-sidecar"
    assert token_server.assertions[0].header["alg"] == "ES384"
    assert token_server.assertions[0].header["kid"] == "sidecar-ec"


def test_jwk_and_jwks_private_keys_are_accepted(
    token_server: TokenServer, rsa_pair: KeyPair, ec_pair: KeyPair, clock: FakeClock
) -> None:
    # A JWK carries its own kid.
    from_jwk = SmartBackendCredentials(
        token_server.token_url, CLIENT_ID, rsa_pair.private_jwk, scope=SCOPE, clock=clock
    )
    assert from_jwk.key_id == "sidecar-rsa"
    assert from_jwk.authorization() == "Bearer test-sidecar"

    # From a JWKS: the first private key that fits the algorithm, or the one named by kid.
    jwks = json.dumps(
        {
            "keys": [
                rsa_pair.public_jwk,
                json.loads(ec_pair.private_jwk),
                json.loads(rsa_pair.private_jwk),
            ]
        }
    )
    first_rsa = SmartBackendCredentials(token_server.token_url, CLIENT_ID, jwks, scope=SCOPE, clock=clock)
    named_ec = SmartBackendCredentials(
        token_server.token_url,
        CLIENT_ID,
        jwks,
        key_id="sidecar-ec",
        algorithm="ES384",
        scope=SCOPE,
        clock=clock,
    )
    assert (first_rsa.key_id, named_ec.key_id) == ("sidecar-rsa", "sidecar-ec")
    assert first_rsa.authorization() == named_ec.authorization() == "Bearer test-sidecar"
    assert token_server.successes == 3


def test_a_key_file_is_read(tmp_path: Path, rsa_pair: KeyPair) -> None:
    path = tmp_path / "sidecar.pem"
    path.write_text(rsa_pair.private_pem)

    key, kid = load_signing_key(load_private_key_text(path), key_id="k")
    assert kid == "k"
    assert key.is_private
    with pytest.raises(ValueError, match="cannot read the private key file"):
        load_private_key_text(tmp_path / "missing.pem")


@pytest.mark.parametrize(
    ("make_text", "options", "message"),
    [
        (lambda rsa, ec: rsa.private_pem, {"algorithm": "RS256"}, "must be one of RS384, ES384"),
        (lambda rsa, ec: rsa.private_pem, {"algorithm": "HS256"}, "must be one of RS384, ES384"),
        (lambda rsa, ec: rsa.private_pem, {"algorithm": "ES384", "key_id": "k"}, "not an unencrypted PEM"),
        (lambda rsa, ec: ec.private_pem, {"key_id": "k"}, "not an unencrypted PEM"),
        (lambda rsa, ec: rsa.private_jwk, {"algorithm": "ES384"}, "ES384 needs an EC P-384 key"),
        (lambda rsa, ec: json.dumps(rsa.public_jwk), {}, "public key"),
        (lambda rsa, ec: rsa.private_pem, {}, "no key id"),
        (lambda rsa, ec: rsa.private_jwk, {"key_id": "other"}, "does not match the JWK's kid"),
        (lambda rsa, ec: json.dumps({"keys": [rsa.public_jwk]}), {}, "has no RSA private key"),
        (lambda rsa, ec: json.dumps({"keys": [rsa.public_jwk]}), {"key_id": "nope"}, "no key with kid"),
        (lambda rsa, ec: "-----BEGIN PRIVATE KEY-----\nnonsense\n", {"key_id": "k"}, "not an unencrypted"),
        (lambda rsa, ec: "{not json", {}, "does not parse"),
        (lambda rsa, ec: "", {}, "empty"),
    ],
)
def test_unusable_keys_are_refused_at_construction(
    rsa_pair: KeyPair,
    ec_pair: KeyPair,
    make_text: Callable[[KeyPair, KeyPair], str],
    options: dict[str, Any],
    message: str,
) -> None:
    text = make_text(rsa_pair, ec_pair)
    with pytest.raises(ValueError, match=message) as caught:
        SmartBackendCredentials("http://auth.test/token", CLIENT_ID, text, scope=SCOPE, **options)
    assert "PRIVATE KEY" not in str(caught.value) and '"d"' not in str(caught.value)


def test_an_ec_p256_key_is_not_an_es384_key() -> None:
    p256 = generate_key_pair("ES256", kid="small")
    with pytest.raises(ValueError, match="EC P-384"):
        load_signing_key(p256.private_jwk, algorithm="ES384")


def test_bad_settings_are_refused(rsa_pair: KeyPair) -> None:
    with pytest.raises(ValueError, match="http"):
        SmartBackendCredentials("auth.test/token", CLIENT_ID, rsa_pair.private_pem, key_id="k", scope=SCOPE)
    with pytest.raises(ValueError, match="scope"):
        SmartBackendCredentials("http://a.test/t", CLIENT_ID, rsa_pair.private_pem, key_id="k", scope=" ")
    with pytest.raises(ValueError, match="client id"):
        SmartBackendCredentials("http://a.test/t", "", rsa_pair.private_pem, key_id="k", scope=SCOPE)


def test_repr_shows_neither_key_nor_token(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock
) -> None:
    credentials = smart(token_server.token_url, rsa_pair, clock)
    credentials.authorization()
    text = repr(credentials)
    assert "sidecar-rsa" in text
    assert "test-sidecar" not in text and "PRIVATE" not in text


def test_settings_choose_smart_or_the_static_header(token_server: TokenServer, rsa_pair: KeyPair) -> None:
    # Settings give the credentials the real clock, so the token server must read it too: with
    # the fixture's frozen clock, an assertion signed a second after the fixture was built is
    # "issued in the future" (CI failed on that once).
    token_server.clock = time.time
    static = credentials_from_settings(Settings(fhir_base_url=AUDIENCE, upstream_authorization="Bearer dev"))
    assert static == StaticCredentials("Bearer dev")
    assert credentials_from_settings(Settings(fhir_base_url=AUDIENCE)) == StaticCredentials(None)

    settings = Settings(
        fhir_base_url=AUDIENCE,
        smart_token_url=token_server.token_url,
        smart_client_id=CLIENT_ID,
        smart_private_key=rsa_pair.private_pem,
        smart_key_id=rsa_pair.kid,
        smart_scope=SCOPE,
    )
    sessions: list[requests.Session] = []

    def session() -> requests.Session:  # as UpstreamClient.session: the pool to use now
        sessions.append(requests.Session())
        return sessions[-1]

    smart_credentials = credentials_from_settings(settings, session)
    assert isinstance(smart_credentials, SmartBackendCredentials)
    assert token_server.requests == 0, "no token before one is needed"
    assert smart_credentials.authorization() == "Bearer test-sidecar"
    assert len(sessions) == 1
    assert token_server.assertions[0].form["scope"] == SCOPE


def test_settings_with_an_unusable_key_stop_the_start(rsa_pair: KeyPair) -> None:
    settings = Settings(
        fhir_base_url=AUDIENCE,
        smart_token_url="http://auth.test/token",
        smart_client_id=CLIENT_ID,
        smart_private_key=rsa_pair.private_pem,  # PEM carries no kid, and SMART_KEY_ID is unset
    )
    with pytest.raises(ConfigError, match=r"SMART_KEY_ID.*no key id"):
        credentials_from_settings(settings)


# --------------------------------------------------------------------------------------------
# The token cache.


def test_one_fetch_serves_many_calls(token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock) -> None:
    credentials = smart(token_server.token_url, rsa_pair, clock)

    headers = {credentials.authorization() for _ in range(50)}

    assert headers == {"Bearer test-sidecar"}
    assert token_server.requests == 1


def test_eight_threads_at_once_share_one_fetch(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock
) -> None:
    token_server.delay = 0.3  # long enough for all threads to arrive while the fetch is under way
    credentials = smart(token_server.token_url, rsa_pair, clock)
    start = threading.Barrier(8)
    results: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        start.wait()
        try:
            results.append(credentials.authorization())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert errors == []
    assert results == ["Bearer test-sidecar"] * 8
    assert token_server.requests == 1


@pytest.mark.parametrize(
    ("expires_in", "kept_for"),
    [
        (3600, 3570),  # margin 30 s
        (600, 570),  # margin 30 s
        (100, 90),  # margin 10 % (10 s) is smaller than 30 s
        (None, 270),  # no expires_in: 300 s assumed
    ],
)
def test_the_token_is_refetched_shortly_before_it_expires(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock, expires_in: int | None, kept_for: int
) -> None:
    token_server.expires_in = expires_in
    credentials = smart(token_server.token_url, rsa_pair, clock)
    credentials.authorization()

    clock.advance(kept_for - 1)
    credentials.authorization()
    assert token_server.successes == 1

    clock.advance(1)
    token_server.access_token = "renewed"
    assert credentials.authorization() == "Bearer renewed"
    assert token_server.successes == 2


def test_invalidate_forces_a_new_token(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock
) -> None:
    credentials = smart(token_server.token_url, rsa_pair, clock)
    token_server.access_token = "one"
    assert credentials.authorization() == "Bearer one"

    token_server.access_token = "two"
    credentials.invalidate("Bearer one")

    assert credentials.authorization() == "Bearer two"
    assert token_server.successes == 2


def test_a_late_401_for_an_older_token_keeps_the_newer_one(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock
) -> None:
    credentials = smart(token_server.token_url, rsa_pair, clock)
    token_server.access_token = "one"
    credentials.authorization()
    credentials.invalidate("Bearer one")
    token_server.access_token = "two"
    credentials.authorization()

    # Another thread's request, sent with the old token, comes back 401 only now.
    credentials.invalidate("Bearer one")

    assert credentials.authorization() == "Bearer two"
    assert token_server.successes == 2


def test_a_forked_child_fetches_its_own_token(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = smart(token_server.token_url, rsa_pair, clock)
    credentials.authorization()

    parent = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)
    credentials.authorization()
    credentials.authorization()

    assert token_server.successes == 2


def test_each_fetch_is_logged_with_scope_and_expiry_but_never_the_token(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    token_server.access_token = "secret-access-token"
    credentials = smart(token_server.token_url, rsa_pair, clock)
    with caplog.at_level(logging.INFO, logger="plugin.service_credentials"):
        credentials.authorization()
        credentials.authorization()

    fetches = [r for r in caplog.records if r.getMessage() == "obtained a SMART backend services token"]
    assert len(fetches) == 1
    record = vars(fetches[0])
    assert record["scope"] == SCOPE
    assert record["expires_in"] == 300
    assert record["expires_at"].startswith(time.strftime("%Y", time.gmtime(clock.now)))
    everything = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "secret-access-token" not in everything
    assert token_server.assertions[0].form["client_assertion"] not in everything


# --------------------------------------------------------------------------------------------
# Failing to get a token.


def test_a_wrong_key_is_refused_with_the_servers_reason(
    token_server: TokenServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    impostor = generate_key_pair("RS384", kid="sidecar-rsa")  # the registered kid, another key
    credentials = smart(token_server.token_url, impostor, clock)

    with pytest.raises(CredentialsUnavailable) as caught:
        credentials.authorization()

    text = caught.value.diagnostics
    assert "HTTP 401 invalid_client" in text
    assert "does not verify" in text
    assert token_server.token_url in text
    assert "eyJ" not in text, "the assertion must not leak into diagnostics"
    assert (caught.value.status, caught.value.code) == (503, "transient")
    assert token_server.failures == 1
    assert any(r.levelno == logging.WARNING and "invalid_client" in r.getMessage() for r in caplog.records)


def test_an_unknown_client_is_refused(token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock) -> None:
    credentials = SmartBackendCredentials(
        token_server.token_url,
        "someone-else",
        rsa_pair.private_pem,
        key_id=rsa_pair.kid,
        scope=SCOPE,
        clock=clock,
    )
    with pytest.raises(
        CredentialsUnavailable, match="invalid_client: the client assertion's claims are wrong"
    ):
        credentials.authorization()


def test_an_unreachable_token_endpoint(rsa_pair: KeyPair, clock: FakeClock) -> None:
    url = closed_port_url()
    credentials = smart(url, rsa_pair, clock)

    with pytest.raises(CredentialsUnavailable, match="unreachable") as caught:
        credentials.authorization()
    assert url in caught.value.diagnostics


def test_a_stopped_token_server_is_unreachable(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock
) -> None:
    credentials = smart(token_server.token_url, rsa_pair, clock)
    token_server.stop()

    with pytest.raises(CredentialsUnavailable, match="unreachable"):
        credentials.authorization()


def test_a_server_error_is_reported_and_not_cached(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock
) -> None:
    credentials = smart(token_server.token_url, rsa_pair, clock)
    token_server.fail_status = 500

    with pytest.raises(
        CredentialsUnavailable, match="HTTP 500 server_error: the token server was told to fail"
    ):
        credentials.authorization()

    token_server.fail_status = None
    assert credentials.authorization() == "Bearer test-sidecar"


def test_threads_waiting_for_a_failing_fetch_share_its_failure(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock
) -> None:
    # With the authorisation server down, requests must not queue one timeout each.
    token_server.delay = 0.3
    token_server.fail_status = 503
    credentials = smart(token_server.token_url, rsa_pair, clock)
    start = threading.Barrier(8)
    failures: list[str] = []

    def call() -> None:
        start.wait()
        try:
            credentials.authorization()
        except CredentialsUnavailable as exc:
            failures.append(exc.diagnostics)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(failures) == 8 and len(set(failures)) == 1
    assert token_server.requests == 1

    token_server.delay = 0.0
    token_server.fail_status = None
    assert credentials.authorization() == "Bearer test-sidecar", "a later call tries again"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"token_type": "bearer", "expires_in": 300}, "without an access_token"),
        ({"access_token": "", "token_type": "bearer"}, "without an access_token"),
        ({"access_token": "x", "token_type": "mac"}, "of type 'mac', not bearer"),
        ({"access_token": "x"}, "of type None, not bearer"),
        ({"access_token": "abc\r\nX-Injected: 1", "token_type": "bearer"}, "not ASCII text"),
        ({"access_token": "tökén", "token_type": "bearer"}, "not ASCII text"),
    ],
)
def test_unusable_token_answers(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock, answer: dict[str, Any], message: str
) -> None:
    token_server.answer = answer
    credentials = smart(token_server.token_url, rsa_pair, clock)

    with pytest.raises(CredentialsUnavailable, match=message):
        credentials.authorization()


def test_token_type_is_case_insensitive(
    token_server: TokenServer, rsa_pair: KeyPair, clock: FakeClock
) -> None:
    token_server.answer = {"access_token": "abc", "token_type": "Bearer", "expires_in": "600"}
    credentials = smart(token_server.token_url, rsa_pair, clock)

    assert credentials.authorization() == "Bearer abc"
    clock.advance(569)
    credentials.authorization()
    assert token_server.successes == 1


# --------------------------------------------------------------------------------------------
# Caller identity.


@dataclass(frozen=True)
class CallerKeys:
    rs256: KeyPair
    rs384: KeyPair
    es256: KeyPair
    es384: KeyPair

    def published(self) -> list[dict[str, Any]]:
        return [self.rs256.public_jwk, self.rs384.public_jwk, self.es256.public_jwk, self.es384.public_jwk]


@pytest.fixture(scope="module")
def caller_keys() -> CallerKeys:
    return CallerKeys(
        rs256=generate_key_pair("RS256", kid="idp-rs256"),
        rs384=generate_key_pair("RS384", kid="idp-rs384"),
        es256=generate_key_pair("ES256", kid="idp-es256"),
        es384=generate_key_pair("ES384", kid="idp-es384"),
    )


@pytest.fixture
def jwks_server(caller_keys: CallerKeys) -> Iterator[JwksServer]:
    with JwksServer(caller_keys.published()) as server:
        yield server


@pytest.fixture
def verifier(jwks_server: JwksServer, clock: FakeClock) -> CallerVerifier:
    return CallerVerifier(jwks_server.jwks_url, issuer=ISSUER, audience=AUDIENCE, clock=clock)


def caller_claims(clock: FakeClock, **changes: Any) -> dict[str, Any]:
    """Claims of a patient app's access token; a change of ``None`` removes that claim."""
    now = int(clock.now)
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "Patient/123",
        "client_id": "patient-app",
        "iat": now,
        "exp": now + 300,
        "scope": "patient/Appointment.rs",
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


@pytest.mark.parametrize("algorithm", ["RS256", "RS384", "ES256", "ES384"])
def test_a_valid_jwt_names_the_caller(
    verifier: CallerVerifier, caller_keys: CallerKeys, clock: FakeClock, algorithm: str
) -> None:
    pair: KeyPair = getattr(caller_keys, algorithm.lower())
    token = sign_token(pair, caller_claims(clock))

    caller = verifier.identify(f"Bearer {token}")

    assert caller == Caller(
        verified=True, subject="Patient/123", issuer=ISSUER, client_id="patient-app", reason=""
    )


def test_azp_names_the_client_when_there_is_no_client_id(
    verifier: CallerVerifier, caller_keys: CallerKeys, clock: FakeClock
) -> None:
    token = sign_token(caller_keys.rs256, caller_claims(clock, client_id=None, azp="portal"))

    caller = verifier.identify(f"bearer {token}")

    assert caller.verified and caller.client_id == "portal"


def test_a_token_within_the_clock_leeway_is_accepted(
    verifier: CallerVerifier, caller_keys: CallerKeys, clock: FakeClock
) -> None:
    now = int(clock.now)
    just_expired = sign_token(caller_keys.es256, caller_claims(clock, exp=now - 50))
    nearly_valid = sign_token(caller_keys.es256, caller_claims(clock, nbf=now + 50, iat=now + 50))

    assert verifier.identify(f"Bearer {just_expired}").verified
    assert verifier.identify(f"Bearer {nearly_valid}").verified


def test_an_audience_list_that_includes_ours_is_accepted(
    verifier: CallerVerifier, caller_keys: CallerKeys, clock: FakeClock
) -> None:
    token = sign_token(caller_keys.rs256, caller_claims(clock, aud=["account", AUDIENCE]))
    assert verifier.identify(f"Bearer {token}").verified


def test_issuer_and_audience_are_only_checked_when_configured(
    jwks_server: JwksServer, caller_keys: CallerKeys, clock: FakeClock
) -> None:
    open_verifier = CallerVerifier(jwks_server.jwks_url, clock=clock)
    token = sign_token(caller_keys.rs256, caller_claims(clock, iss="https://other.example", aud="x"))

    caller = open_verifier.identify(f"Bearer {token}")

    assert caller.verified and caller.issuer == "https://other.example"


Forge = Callable[[CallerKeys, FakeClock], str | None]


def _tampered(keys: CallerKeys, clock: FakeClock) -> str:
    header, _, signature = sign_token(keys.rs256, caller_claims(clock)).split(".")
    payload = base64.urlsafe_b64encode(json.dumps(caller_claims(clock, sub="Patient/999")).encode())
    return f"Bearer {header}.{payload.rstrip(b'=').decode()}.{signature}"


def _other_key_same_kid(keys: CallerKeys, clock: FakeClock) -> str:
    impostor = generate_key_pair("RS256", kid=keys.rs256.kid)
    return f"Bearer {sign_token(impostor, caller_claims(clock))}"


def _ec_signature_under_rsa_kid(keys: CallerKeys, clock: FakeClock) -> str:
    return f"Bearer {sign_token(keys.es256, caller_claims(clock), kid=keys.rs256.kid)}"


def _hmac_with_the_public_key(keys: CallerKeys, clock: FakeClock) -> str:
    public_pem = keys.rs256.key.as_pem(private=False)
    return f"Bearer {hmac_token(public_pem, caller_claims(clock), kid=keys.rs256.kid)}"


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        pytest.param(lambda k, c: None, "no bearer token", id="no header"),
        pytest.param(lambda k, c: "", "no bearer token", id="empty header"),
        pytest.param(lambda k, c: "Bearer ", "no bearer token", id="empty bearer"),
        pytest.param(lambda k, c: "Basic eHl6OnBhc3M=", "not a bearer token", id="basic"),
        pytest.param(lambda k, c: "Bearer xyz", "not a JWT", id="opaque token"),
        pytest.param(lambda k, c: "Bearer a.b.c", "not a JWT", id="garbage segments"),
        pytest.param(lambda k, c: "Bearer " + "e30." * 4, "not a JWT", id="five segments"),
        pytest.param(lambda k, c: "Bearer " + "a" * 20_000 + ".b.c", "not a JWT", id="huge"),
        pytest.param(
            lambda k, c: f"Bearer {unsecured_token(caller_claims(c))}",
            "algorithm 'none' not accepted",
            id="alg none",
        ),
        pytest.param(_hmac_with_the_public_key, "algorithm 'HS256' not accepted", id="HS256 confusion"),
        pytest.param(_other_key_same_kid, "signature does not verify", id="wrong signature"),
        pytest.param(_tampered, "signature does not verify", id="tampered claims"),
        pytest.param(_ec_signature_under_rsa_kid, "signature does not verify", id="key type mismatch"),
        pytest.param(
            lambda k, c: f"Bearer {sign_token(k.rs256, caller_claims(c, exp=int(c.now) - 120))}",
            "expired",
            id="expired",
        ),
        pytest.param(
            lambda k, c: f"Bearer {sign_token(k.rs256, caller_claims(c, nbf=int(c.now) + 600))}",
            "not yet valid",
            id="not yet valid",
        ),
        pytest.param(
            lambda k, c: f"Bearer {sign_token(k.rs256, caller_claims(c, exp=None))}",
            "missing claim exp",
            id="no exp",
        ),
        pytest.param(
            lambda k, c: f"Bearer {sign_token(k.rs256, caller_claims(c, iss='https://evil.example'))}",
            "wrong issuer",
            id="wrong issuer",
        ),
        pytest.param(
            lambda k, c: f"Bearer {sign_token(k.rs256, caller_claims(c, iss=None))}",
            "missing claim iss",
            id="no issuer",
        ),
        pytest.param(
            lambda k, c: f"Bearer {sign_token(k.rs256, caller_claims(c, aud='https://other/fhir'))}",
            "wrong audience",
            id="wrong audience",
        ),
        pytest.param(
            lambda k, c: f"Bearer {sign_token(k.rs256, caller_claims(c), kid='never-published')}",
            "unknown key id",
            id="unknown kid",
        ),
        pytest.param(
            lambda k, c: f"Bearer {sign_token(k.rs256, caller_claims(c), kid=None)}",
            "unknown key id",
            id="no kid, several keys",
        ),
    ],
)
def test_anything_else_is_unverified_with_a_reason(
    verifier: CallerVerifier, caller_keys: CallerKeys, clock: FakeClock, forge: Forge, reason: str
) -> None:
    caller = verifier.identify(forge(caller_keys, clock))

    assert caller == Caller(verified=False, reason=reason)


def test_without_a_jwks_nobody_is_verified_and_no_claim_is_reported(
    caller_keys: CallerKeys, clock: FakeClock
) -> None:
    token = sign_token(caller_keys.rs256, caller_claims(clock))

    caller = CallerVerifier(None, clock=clock).identify(f"Bearer {token}")

    assert caller == Caller(verified=False, reason="no JWKS configured")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer e30.e30.",
        "Bearer ..",
        "Bearer é.a.b",
        "Bearer " + base64.urlsafe_b64encode(b'"alg"').decode() + ".e30.x",
        "Bearer " + base64.urlsafe_b64encode(b'{"alg":"RS256","kid":7}').decode() + ".e30.x",
        "Bearer " + base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"idp-rs256"}').decode() + ".W10.x",
        "Bearer " + base64.urlsafe_b64encode(b'{"alg":["RS256"]}').decode() + ".e30.x",
        "Bearer\tabc",
        "Bearer a b c",
    ],
)
def test_identify_never_raises(verifier: CallerVerifier, header: str) -> None:
    caller = verifier.identify(header)

    assert not caller.verified and caller.reason
    assert caller.subject is caller.issuer is caller.client_id is None


# --------------------------------------------------------------------------------------------
# The JWKS cache.


def test_the_jwks_is_fetched_once_and_kept_for_cache_seconds(
    verifier: CallerVerifier, jwks_server: JwksServer, caller_keys: CallerKeys, clock: FakeClock
) -> None:
    for _ in range(10):
        assert verifier.identify(f"Bearer {sign_token(caller_keys.rs256, caller_claims(clock))}").verified
    assert jwks_server.fetches == 1

    clock.advance(301)
    assert verifier.identify(f"Bearer {sign_token(caller_keys.es384, caller_claims(clock))}").verified
    assert jwks_server.fetches == 2


def test_a_new_kid_is_picked_up_after_rotation_without_a_refetch_storm(
    caller_keys: CallerKeys, clock: FakeClock
) -> None:
    old, new = caller_keys.rs256, caller_keys.es256
    with JwksServer([old.public_jwk]) as server:
        verifier = CallerVerifier(server.jwks_url, issuer=ISSUER, audience=AUDIENCE, clock=clock)
        assert verifier.identify(f"Bearer {sign_token(old, caller_claims(clock))}").verified
        assert server.fetches == 1

        server.keys = [old.public_jwk, new.public_jwk]  # the issuer rotates
        clock.advance(31)
        caller = verifier.identify(f"Bearer {sign_token(new, caller_claims(clock))}")
        assert caller.verified, caller.reason
        assert server.fetches == 2

        # Tokens naming a kid nobody publishes: one refetch per 30 s at most.
        made_up = f"Bearer {sign_token(new, caller_claims(clock), kid='made-up')}"
        for _ in range(20):
            assert verifier.identify(made_up).reason == "unknown key id"
        assert server.fetches == 2
        clock.advance(31)
        for _ in range(20):
            assert verifier.identify(made_up).reason == "unknown key id"
        assert server.fetches == 3
        assert verifier.identify(f"Bearer {sign_token(old, caller_claims(clock))}").verified


def test_a_just_rotated_kid_waits_for_the_refetch_interval(caller_keys: CallerKeys, clock: FakeClock) -> None:
    old, new = caller_keys.rs256, caller_keys.es256
    with JwksServer([old.public_jwk]) as server:
        verifier = CallerVerifier(server.jwks_url, clock=clock)
        verifier.identify(f"Bearer {sign_token(old, caller_claims(clock))}")
        server.keys = [old.public_jwk, new.public_jwk]

        assert verifier.identify(f"Bearer {sign_token(new, caller_claims(clock))}").reason == "unknown key id"
        assert server.fetches == 1


def test_an_unreachable_jwks_leaves_callers_unverified(caller_keys: CallerKeys, clock: FakeClock) -> None:
    verifier = CallerVerifier(closed_port_url("/jwks"), clock=clock)
    token = sign_token(caller_keys.rs256, caller_claims(clock))

    assert verifier.identify(f"Bearer {token}") == Caller(verified=False, reason="JWKS unreachable")


def test_a_failing_jwks_is_retried_at_most_every_30_seconds(
    jwks_server: JwksServer, caller_keys: CallerKeys, clock: FakeClock
) -> None:
    verifier = CallerVerifier(jwks_server.jwks_url, clock=clock)
    token = f"Bearer {sign_token(caller_keys.rs256, caller_claims(clock))}"
    jwks_server.fail_status = 503

    for _ in range(10):
        assert verifier.identify(token).reason == "JWKS unreachable"
    assert jwks_server.fetches == 1

    jwks_server.fail_status = None
    clock.advance(31)
    assert verifier.identify(token).verified
    assert jwks_server.fetches == 2


def test_a_failed_refresh_does_not_keep_trusting_the_old_keys(
    jwks_server: JwksServer, caller_keys: CallerKeys, clock: FakeClock
) -> None:
    verifier = CallerVerifier(jwks_server.jwks_url, clock=clock)
    assert verifier.identify(f"Bearer {sign_token(caller_keys.rs256, caller_claims(clock))}").verified

    jwks_server.fail_status = 500
    clock.advance(301)
    token = f"Bearer {sign_token(caller_keys.rs256, caller_claims(clock))}"
    assert verifier.identify(token).reason == "JWKS unreachable"


@pytest.mark.parametrize(
    "keys",
    [
        [],
        [{"kty": "oct", "k": "c2VjcmV0", "kid": "shared"}],
        [{"kty": "RSA", "kid": "broken", "n": "AQAB"}],
    ],
)
def test_a_jwks_without_usable_signing_keys(
    jwks_server: JwksServer, caller_keys: CallerKeys, clock: FakeClock, keys: list[dict[str, Any]]
) -> None:
    jwks_server.keys = keys
    verifier = CallerVerifier(jwks_server.jwks_url, clock=clock)

    caller = verifier.identify(f"Bearer {sign_token(caller_keys.rs256, caller_claims(clock))}")

    assert caller == Caller(verified=False, reason="JWKS unusable")


def test_an_unusable_entry_does_not_hide_the_good_keys(
    jwks_server: JwksServer, caller_keys: CallerKeys, clock: FakeClock
) -> None:
    jwks_server.keys = [
        {"kty": "PQC", "kid": "future"},
        {"kty": "RSA", "kid": "enc", "use": "enc", **caller_keys.rs384.public_jwk},
        caller_keys.rs256.public_jwk,
    ]
    verifier = CallerVerifier(jwks_server.jwks_url, clock=clock)

    assert verifier.identify(f"Bearer {sign_token(caller_keys.rs256, caller_claims(clock))}").verified


def test_eight_threads_share_one_jwks_fetch(
    verifier: CallerVerifier, jwks_server: JwksServer, caller_keys: CallerKeys, clock: FakeClock
) -> None:
    tokens = [
        f"Bearer {sign_token(pair, caller_claims(clock))}"
        for pair in (caller_keys.rs256, caller_keys.rs384, caller_keys.es256, caller_keys.es384) * 2
    ]
    start = threading.Barrier(len(tokens))
    results: list[Caller] = []

    def call(header: str) -> None:
        start.wait()
        results.append(verifier.identify(header))

    threads = [threading.Thread(target=call, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(results) == 8 and all(caller.verified for caller in results)
    assert jwks_server.fetches == 1


def test_the_verifier_from_settings(jwks_server: JwksServer, caller_keys: CallerKeys) -> None:
    settings = Settings(
        fhir_base_url=AUDIENCE,
        caller_jwks_url=jwks_server.jwks_url,
        caller_jwt_issuer=ISSUER,
        caller_jwt_audience=AUDIENCE,
    )
    verifier = verifier_from_settings(settings)
    now = int(time.time())
    good = sign_token(caller_keys.rs256, {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "exp": now + 60})
    elsewhere = sign_token(caller_keys.rs256, {"iss": ISSUER, "aud": "other", "sub": "u", "exp": now + 60})

    assert verifier.identify(f"Bearer {good}").verified
    assert verifier.identify(f"Bearer {elsewhere}").reason == "wrong audience"
    assert verifier_from_settings(Settings(fhir_base_url=AUDIENCE)).identify(f"Bearer {good}") == Caller(
        verified=False, reason="no JWKS configured"
    )


def test_bad_verifier_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        CallerVerifier("idp.example/jwks")
    with pytest.raises(ValueError, match="cache_seconds"):
        CallerVerifier("http://idp.example/jwks", cache_seconds=0)
