"""Who the sidecar is, and who the caller is (SPEC §5.1): what both sides share on the wire.

Two concerns, one module each:

* **Service credentials** (``plugin/service_credentials.py``) -- what the sidecar sends as
  ``Authorization`` on the reads that decide and on every write: a static header for development,
  or SMART Backend Services (OAuth 2.0 ``client_credentials`` with a signed JWT client assertion)
  for production, the token cached until shortly before it expires.
* **Caller identity** (``plugin/caller_identity.py``) -- who to name in the Provenance written
  with each transaction: verified only when the bearer token is a JWT whose signature checks out
  against the administrator's JWKS. Access control is not decided there: the caller's own token
  still goes to the upstream for the reads that stand for permission.

Both fetch small JSON documents (a token, a JWKS) with a session of their own per process; this
module holds that plumbing. No JOSE is written by hand: authlib signs, joserfc verifies.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import requests

Clock = Callable[[], float]
"""Wall-clock seconds since the epoch (``time.time``): JWT times are wall-clock times."""
Timeout = float | tuple[float, float]
SessionSource = requests.Session | Callable[[], requests.Session]
"""A session, or a function giving the session to use now -- such as
``UpstreamClient.session``, which makes a new one after a fork so no socket is shared."""


DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 10.0)
MAX_DIAGNOSTICS = 300
"""Characters of a remote error kept in diagnostics."""
BEARER = "bearer"


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


def session_getter(source: SessionSource | None) -> Callable[[], requests.Session]:
    if source is None:
        return _PerProcessSession()
    if isinstance(source, requests.Session):
        return lambda: source
    return source


def no_netrc(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An explicit no-op auth: ``requests`` would otherwise add ``~/.netrc`` credentials to a
    request that carries none."""
    return request


def json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
