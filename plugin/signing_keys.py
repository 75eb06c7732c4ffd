"""The sidecar's signing key for SMART Backend Services client assertions: read from a PEM or
JWK(S) file given by the administrator, checked at start to fit the algorithm (RS384: RSA,
ES384: EC P-384), so a wrong key stops the process instead of failing the first booking."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, RSAKey, import_key

SMART_ALGORITHMS = ("RS384", "ES384")
"""Client assertion algorithms SMART Backend Services allows (servers must support both)."""


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
