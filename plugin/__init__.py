"""The Fanoni Scheduling sidecar: everything that speaks HTTP (Flask routes, the upstream FHIR
client, registration, the command line). The scheduling rules live in ``operations/``."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version


@cache
def version() -> str:
    """The installed package version (shown in ``/metadata`` and the upstream User-Agent).

    Running from a source checkout without ``pip install`` is legitimate (tests, development),
    so a missing distribution is not an error.
    """
    try:
        return _distribution_version("fanoni-scheduling")
    except PackageNotFoundError:
        return "0+source"
