"""Real little HTTP servers for identity tests: an OAuth 2.0 token endpoint and a JWKS host.

They run in a thread on a free 127.0.0.1 port, so the code under test does real HTTP (form
posts, JSON, status codes, refused connections) instead of talking to mocks that would agree
with whatever the client sends. The token endpoint checks client assertions the way a SMART
Backend Services authorisation server must, independently of ``plugin.service_credentials``: the rules are
written out here from the SMART and RFC 7523 texts, not imported from the code under test.

Also: key pairs (RSA, EC P-256/P-384) in every form the sidecar accepts, and signing of caller
JWTs, including the malformed and hostile ones (``alg: none``, HMAC with a public key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey, import_key
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SMART_ASSERTION_ALGORITHMS = ["RS384", "ES384"]
MAX_ASSERTION_SECONDS = 300


# --------------------------------------------------------------------------------------------
# Keys.


@dataclass(frozen=True)
class KeyPair:
    """One signing key in the forms a deployment may hold it in."""

    algorithm: str
    kid: str
    private_pem: str
    private_jwk: str
    """JSON text of the private JWK (with ``kid``)."""
    public_jwk: dict[str, Any]
    """The public JWK (with ``kid``), as registered with a server or published in a JWKS."""
    key: RSAKey | ECKey = field(repr=False)
    """The joserfc private key, for signing test tokens."""


def generate_key_pair(algorithm: str = "RS384", kid: str | None = None) -> KeyPair:
    """A fresh key pair for ``algorithm`` (RS256/RS384: RSA 2048; ES256: P-256; ES384: P-384)."""
    kid = kid or f"test-{algorithm.lower()}-{time.monotonic_ns()}"
    key: RSAKey | ECKey
    if algorithm.startswith("RS"):
        key = RSAKey.generate_key(2048, parameters={"kid": kid})
    elif algorithm == "ES256":
        key = ECKey.generate_key("P-256", parameters={"kid": kid})
    elif algorithm == "ES384":
        key = ECKey.generate_key("P-384", parameters={"kid": kid})
    else:
        raise ValueError(f"no test keys for {algorithm}")
    return KeyPair(
        algorithm=algorithm,
        kid=kid,
        private_pem=key.as_pem(private=True).decode("ascii"),
        private_jwk=json.dumps(key.as_dict(private=True)),
        public_jwk=dict(key.as_dict(private=False)),
        key=key,
    )


def sign_token(pair: KeyPair, claims: dict[str, Any], *, algorithm: str | None = None, **header: Any) -> str:
    """A JWT signed with ``pair``; the header carries ``pair.kid`` unless ``kid=`` says otherwise
    (``kid=None`` leaves it out)."""
    alg = algorithm or pair.algorithm
    fields: dict[str, Any] = {"alg": alg, "kid": pair.kid, **header}
    if fields["kid"] is None:
        del fields["kid"]
    return jwt.encode(fields, dict(claims), pair.key, algorithms=[alg])


def unsecured_token(claims: dict[str, Any], **header: Any) -> str:
    """An ``alg: none`` JWT (RFC 7519 §6): no signature at all. Built by hand on purpose, since
    JOSE libraries rightly refuse to make one by default."""
    return f"{_segment({'alg': 'none', 'typ': 'JWT', **header})}.{_segment(claims)}."


def hmac_token(secret: bytes, claims: dict[str, Any], *, kid: str | None = None) -> str:
    """An HS256 JWT; with an RSA public key's bytes as ``secret`` this is the classic
    algorithm-confusion forgery a verifier must refuse. Signed by hand with ``hmac``: joserfc
    rightly refuses to take a public key as an HMAC secret."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(data: dict[str, Any]) -> str:
    return _b64(json.dumps(data).encode())


def closed_port_url(path: str = "/token") -> str:
    """A 127.0.0.1 URL nothing listens on: connections to it are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


# --------------------------------------------------------------------------------------------
# A server in a thread.


class _QuietHandler(WSGIRequestHandler):
    """No access log lines: pytest would show them for every failing test."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class _ThreadedServer:
    """A werkzeug server on a free 127.0.0.1 port, served from a daemon thread."""

    def __init__(self) -> None:
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler
        )
        self.base_url = f"http://127.0.0.1:{self._server.server_port}"
        # A short poll interval: stop() waits for the next poll, and every test stops a server.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=type(self).__name__,
            daemon=True,
        )
        self._running = False
        self._lock = threading.Lock()

    def start(self) -> Self:
        if not self._running:
            self._thread.start()
            self._running = True
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; later connections are refused."""
        if self._running:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._running = False
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wsgi(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        response = self.handle(Request(environ))
        return response(environ, start_response)

    def handle(self, request: Request) -> Response:
        raise NotImplementedError


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


# --------------------------------------------------------------------------------------------
# The token endpoint.


@dataclass(frozen=True)
class AssertionSeen:
    """A client assertion the token server accepted: what the client really sent."""

    header: dict[str, Any]
    claims: dict[str, Any]
    form: dict[str, str]


class TokenServer(_ThreadedServer):
    """An OAuth 2.0 token endpoint for ``client_credentials`` with ``private_key_jwt``.

    It knows one client (``client_id``) and that client's public JWKs, and checks each client
    assertion: signature by a registered key (RS384/ES384, kid required), ``iss`` = ``sub`` =
    client id, ``aud`` = its own token URL, ``exp`` in the future and at most five minutes
    ahead, ``jti`` present and never seen before. Accepted requests get
    ``{"access_token", "token_type": "bearer", "expires_in", "scope"}``; refused ones 400/401
    ``{"error": "invalid_client" | ..., "error_description": ...}``.

    Test knobs (plain attributes, change them between calls): ``access_token``, ``expires_in``
    (``None`` leaves it out), ``delay`` (seconds before answering), ``fail_status`` (answer every
    request with this status and ``server_error``), ``answer`` (a body to send with status 200
    instead of the normal one, after the assertion checks passed).
    """

    def __init__(
        self,
        client_id: str,
        public_keys: Iterable[dict[str, Any]],
        *,
        access_token: str = "test-sidecar",
        expires_in: int | None = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.client_id = client_id
        self.keys = KeySet([import_key(dict(jwk)) for jwk in public_keys])
        self.access_token = access_token
        self.expires_in = expires_in
        self.clock = clock
        self.delay = 0.0
        self.fail_status: int | None = None
        self.answer: dict[str, Any] | None = None
        self.successes = 0
        self.failures = 0
        self.errors: list[str] = []
        self.assertions: list[AssertionSeen] = []
        self._seen_jti: set[str] = set()

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    @property
    def requests(self) -> int:
        return self.successes + self.failures

    def handle(self, request: Request) -> Response:
        if request.path != "/token":
            return _json({"error": "not_found"}, 404)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_status is not None:
            return self._refuse(self.fail_status, "server_error", "the token server was told to fail")
        if request.method != "POST":
            return self._refuse(405, "invalid_request", "POST only")
        form = {key: request.form[key] for key in request.form}
        if form.get("grant_type") != "client_credentials":
            return self._refuse(400, "unsupported_grant_type", f"grant_type {form.get('grant_type')!r}")
        if form.get("client_assertion_type") != JWT_BEARER:
            return self._refuse(400, "invalid_request", "client_assertion_type must be jwt-bearer")
        assertion = form.get("client_assertion")
        if not assertion:
            return self._refuse(400, "invalid_request", "no client_assertion")
        problem, header, claims = self._check_assertion(assertion)
        if problem is not None:
            return self._refuse(401, "invalid_client", problem)
        with self._lock:
            self.successes += 1
            self.assertions.append(AssertionSeen(header, claims, form))
        if self.answer is not None:
            return _json(self.answer)
        body: dict[str, Any] = {"access_token": self.access_token, "token_type": "bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        if "scope" in form:
            body["scope"] = form["scope"]
        return _json(body)

    def _check_assertion(self, assertion: str) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
        try:
            token = jwt.decode(assertion, self.keys, algorithms=SMART_ASSERTION_ALGORITHMS)
        except JoseError as exc:
            return f"the client assertion does not verify ({exc.error})", {}, {}
        header, claims = dict(token.header), dict(token.claims)
        if not header.get("kid"):
            return "the client assertion has no kid header", header, claims
        now = int(self.clock())
        registry = jwt.JWTClaimsRegistry(
            now=now,
            iss={"essential": True, "value": self.client_id},
            sub={"essential": True, "value": self.client_id},
            aud={"essential": True, "value": self.token_url},
            exp={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            return f"the client assertion's claims are wrong: {exc}", header, claims
        if claims["exp"] > now + MAX_ASSERTION_SECONDS:
            return "the client assertion expires more than five minutes ahead", header, claims
        with self._lock:
            if claims["jti"] in self._seen_jti:
                return "the client assertion's jti was used before", header, claims
            self._seen_jti.add(claims["jti"])
        return None, header, claims

    def _refuse(self, status: int, error: str, description: str) -> Response:
        with self._lock:
            self.failures += 1
            self.errors.append(f"{error}: {description}")
        return _json({"error": error, "error_description": description}, status)


# --------------------------------------------------------------------------------------------
# The JWKS host.


class JwksServer(_ThreadedServer):
    """Serves ``{"keys": [...]}`` at ``.jwks_url`` and counts the fetches.

    ``keys`` may be replaced at any time (key rotation); ``fail_status`` makes it answer that
    status instead.
    """

    def __init__(self, keys: Iterable[dict[str, Any]]) -> None:
        super().__init__()
        self.keys: list[dict[str, Any]] = [dict(key) for key in keys]
        self.fail_status: int | None = None
        self.fetches = 0

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/jwks"

    def handle(self, request: Request) -> Response:
        if request.path != "/jwks":
            return _json({"error": "not_found"}, 404)
        with self._lock:
            self.fetches += 1
            keys = list(self.keys)
        if self.fail_status is not None:
            return _json({"error": "server_error"}, self.fail_status)
        return _json({"keys": keys})
