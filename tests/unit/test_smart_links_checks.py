"""The SMART Scheduling Links validator (``tests/support/smart_links.py``) catches what it is
there to catch: each breakage below of a valid publication fails it, naming the rule."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from operations.publish_resources import files, manifest
from tests.support.smart_links import REGISTRY, check_publication
from tests.unit.test_publish import BASE, clinic, published

Resource = dict[str, Any]
Files = dict[str, list[Resource]]


def valid() -> tuple[Resource, Files]:
    publication = published(clinic())
    document = manifest(publication, f"{BASE}/$bulk-publish", lambda kind: f"{BASE}/{kind}.ndjson")
    return document, copy.deepcopy(files(publication))


def serve(found: Files, raw: dict[str, bytes] | None = None) -> Callable[[str], tuple[int, str, bytes]]:
    def fetch(url: str) -> tuple[int, str, bytes]:
        kind = url.removeprefix(f"{BASE}/").removesuffix(".ndjson")
        if raw and kind in raw:
            return 200, "application/fhir+ndjson", raw[kind]
        lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in found.get(kind, []))
        return 200, "application/fhir+ndjson", lines.encode()

    return fetch


def test_the_valid_publication_passes() -> None:
    document, found = valid()
    assert len(check_publication(document, serve(found))["Slot"]) == 8


BREAKAGES: list[tuple[str, Callable[[Resource, Files], None], str]] = [
    ("no transactionTime", lambda m, f: m.pop("transactionTime"), "transactionTime"),
    ("a date only", lambda m, f: m.update(transactionTime="2026-12-06"), "2026-12-06"),
    ("a relative file URL", lambda m, f: m["output"][0].update(url="Location.ndjson"), "absolute"),
    ("no Slot file", lambda m, f: m["output"].pop(), "a file of each type"),
    ("a Location without address", lambda m, f: f["Location"][0].pop("address"), "address"),
    ("an e-mail contact point", lambda m, f: f["Location"][0]["telecom"][0].update(system="email"), "system"),
    ("no identifier", lambda m, f: f["Location"][0].pop("identifier"), "identifier"),
    (
        "a Practitioner actor",
        lambda m, f: f["Schedule"][0].update(actor=[{"reference": "Practitioner/a"}]),
        "actor",
    ),
    ("no serviceType", lambda m, f: f["Schedule"][0].pop("serviceType"), "serviceType"),
    (
        "a Slot of an unpublished Schedule",
        lambda m, f: f["Slot"][0].update(schedule={"reference": "Schedule/x"}),
        "schedule",
    ),
    ("a busy Slot", lambda m, f: f["Slot"][0].update(status="busy"), "status"),
    (
        "end before start",
        lambda m, f: f["Slot"][0].update(end=f["Slot"][0]["start"], start=f["Slot"][0]["end"]),
        "start < end",
    ),
    ("a start without offset", lambda m, f: f["Slot"][0].update(start="2026-12-07T09:00:00"), "start"),
    (
        "a misspelt extension",
        lambda m, f: f["Slot"][0]["extension"][0].update(url=REGISTRY + "booking-deeplink"),
        "unknown extension",
    ),
    (
        "a deep link as a string",
        lambda m, f: f["Slot"][0]["extension"][0].update(valueString="x"),
        "valueUrl",
    ),
    ("a repeated Slot id", lambda m, f: f["Slot"][1].update(id=f["Slot"][0]["id"]), "repeat"),
    ("an id too long", lambda m, f: f["Slot"][0].update(id="x" * 65), "id"),
]


@pytest.mark.parametrize(("what", "breakage", "message"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_each_breakage_fails_the_check(
    what: str, breakage: Callable[[Resource, Files], None], message: str
) -> None:
    document, found = valid()
    breakage(document, found)
    with pytest.raises((AssertionError, KeyError), match=message):
        check_publication(document, serve(found))


def test_ndjson_must_be_minified_lines_of_the_files_type() -> None:
    document, found = valid()
    location = json.dumps(found["Location"][0])  # not minified
    with pytest.raises(AssertionError, match="not minified"):
        check_publication(document, serve(found, {"Location": (location + "\n").encode()}))
    with pytest.raises(AssertionError, match="newline"):
        check_publication(document, serve(found, {"Location": location.replace(" ", "").encode()}))
    slot_in_location_file = json.dumps(found["Slot"][0], separators=(",", ":")) + "\n"
    with pytest.raises(AssertionError, match="Slot"):
        check_publication(document, serve(found, {"Location": slot_in_location_file.encode()}))
