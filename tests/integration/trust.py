"""The fixed secrets and tokens the integration and reliability suites run HAPI and the
sidecar with (docs/security.md explains what each is for in production).

The test HAPI (``hapi-server/``) knows the bearer tokens below when it is started with
``--hapi.fanoni_test_authorization=true``; a request without ``Authorization`` is still let
through there, so fixtures can load and scan data anonymously.
"""

from __future__ import annotations

GUARD_KEY = "integration-guard-key-0123456789"
"""What the HAPI guard recognises the sidecar by (``X-Fanoni-Service-Key``)."""
NOTIFICATION_SECRET = "integration-notification-secret"
SIDECAR_TOKEN = "Bearer test-sidecar"
FRONT_DESK_TOKEN = "Bearer test-front-desk"
DIRECTORY_TOKEN = "Bearer test-directory"
"""The test HAPI's token for an app that may read who works where, but no Schedule."""


def patient_token(patient_id: str) -> str:
    """The test HAPI's token for a patient app acting for ``Patient/<patient_id>``."""
    return f"Bearer test-patient.{patient_id}"


SERVICE_HEADERS = {"X-Fanoni-Service-Key": GUARD_KEY}
"""Headers that make a direct write count as the sidecar's: for test fixtures that plant
booked Slots (the guard refuses them from anyone else)."""


def hapi_args() -> list[str]:
    """The test HAPI as the suites run it: guard on with the key, authorization on,
    subscriptions on (the server's default)."""
    return [
        f"--hapi.fanoni_guard_key={GUARD_KEY}",
        "--hapi.fanoni_test_authorization=true",
    ]


def sidecar_env(port: int) -> dict[str, str]:
    """The sidecar's own identity and its notification webhook, listening on ``port``."""
    return {
        "UPSTREAM_AUTHORIZATION": SIDECAR_TOKEN,
        "GUARD_KEY": GUARD_KEY,
        "NOTIFICATION_URL": f"http://127.0.0.1:{port}/fanoni/notifications",
        "NOTIFICATION_SECRET": NOTIFICATION_SECRET,
    }
