"""The SMART Scheduling Links rules as checks (smart-on-fhir/smart-scheduling-links,
specification.md: "Slot Publisher API"), run on what ``$bulk-publish`` serves in the unit, API
and integration tests.

:func:`check_publication` takes the manifest and a way to fetch a URL, follows every ``output``
and ``error`` URL, and checks the manifest, each NDJSON file, each resource's required elements
and every reference between the files. It raises ``AssertionError`` naming the first rule
broken, and returns the resources by type for the test's own assertions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

Resource = dict[str, Any]
Fetch = Callable[[str], tuple[int, str, bytes]]
"""``fetch(url) -> (status, content type, body)``."""

REGISTRY = "http://fhir-registry.smarthealthit.org/StructureDefinition/"
SLOT_EXTENSIONS = {
    REGISTRY + "booking-deep-link": "valueUrl",
    REGISTRY + "booking-phone": "valueString",
    REGISTRY + "slot-capacity": "valueInteger",
}
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
"""At least to the second, with an offset (the specification's "Timestamps")."""
ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TYPES = ("Location", "Schedule", "Slot")


def check_publication(manifest: Resource, fetch: Fetch) -> dict[str, list[Resource]]:
    """Every rule of the specification on a manifest and the files it lists."""
    _check_manifest(manifest)
    found: dict[str, list[Resource]] = {kind: [] for kind in (*TYPES, "OperationOutcome")}
    for item in [*manifest["output"], *manifest["error"]]:
        status, content_type, body = fetch(item["url"])
        assert status == 200, f"{item['url']}: status {status}"
        assert content_type.split(";")[0].strip() == "application/fhir+ndjson", (
            f"{item['url']}: {content_type}"
        )
        found[item["type"]].extend(_lines(body, item["type"], item["url"]))
    for kind in TYPES:
        ids = [r["id"] for r in found[kind]]
        assert len(ids) == len(set(ids)), f"{kind} ids repeat across the files"
    locations = {f"Location/{r['id']}" for r in found["Location"]}
    for location in found["Location"]:
        _check_location(location)
    schedules = set()
    for schedule in found["Schedule"]:
        _check_schedule(schedule, locations)
        schedules.add(f"Schedule/{schedule['id']}")
    for slot in found["Slot"]:
        _check_slot(slot, schedules)
    return found


def _check_manifest(manifest: Resource) -> None:
    missing = {"transactionTime", "request", "output", "error"} - set(manifest)
    assert not missing, f"the manifest lacks {sorted(missing)}"
    assert isinstance(manifest["transactionTime"], str), manifest["transactionTime"]
    assert TIMESTAMP.fullmatch(manifest["transactionTime"]), manifest["transactionTime"]
    _check_url(manifest["request"])
    assert urlsplit(manifest["request"]).path.endswith("$bulk-publish"), manifest["request"]
    assert isinstance(manifest["output"], list) and manifest["output"], "output must list files"
    for item in manifest["output"]:
        assert item.get("type") in TYPES, item
        _check_url(item.get("url"))
        extension = item.get("extension")
        if extension is not None:
            states = extension.get("state")
            assert isinstance(states, list) and all(isinstance(s, str) for s in states), item
    assert {item["type"] for item in manifest["output"]} == set(TYPES), "a file of each type"
    assert isinstance(manifest["error"], list), manifest["error"]
    for item in manifest["error"]:
        assert item.get("type") == "OperationOutcome", item
        _check_url(item.get("url"))


def _lines(body: bytes, kind: str, url: str) -> list[Resource]:
    """NDJSON: one minified JSON object per line, each of the file's type."""
    text = body.decode("utf-8")
    assert text == "" or text.endswith("\n"), f"{url}: the last line must end with a newline"
    resources = []
    for number, line in enumerate(text.splitlines(), start=1):
        assert line.strip() == line and line, f"{url} line {number}: blank or padded"
        resource = json.loads(line)
        assert isinstance(resource, dict), f"{url} line {number}: not an object"
        assert json.dumps(resource, separators=(",", ":"), ensure_ascii=False) == line, (
            f"{url} line {number}: not minified"
        )
        assert resource.get("resourceType") == kind, f"{url} line {number}: {resource.get('resourceType')}"
        assert ID.fullmatch(str(resource.get("id"))), f"{url} line {number}: id {resource.get('id')!r}"
        resources.append(resource)
    return resources


def _check_location(location: Resource) -> None:
    what = f"Location/{location['id']}"
    assert _text(location.get("name")), f"{what}: name"
    telecom = location.get("telecom")
    assert isinstance(telecom, list) and telecom, f"{what}: telecom needs a contact point"
    for point in telecom:
        assert point.get("system") in ("phone", "url") and _text(point.get("value")), f"{what}: {point}"
    address = location.get("address")
    assert isinstance(address, dict), f"{what}: address"
    line = address.get("line")
    assert isinstance(line, list) and line and all(_text(x) for x in line), f"{what}: address.line"
    for element in ("city", "state", "postalCode"):
        assert _text(address.get(element)), f"{what}: address.{element}"
    identifiers = location.get("identifier")
    assert isinstance(identifiers, list) and identifiers, f"{what}: identifier"
    for identifier in identifiers:
        assert _text(identifier.get("system")) and _text(identifier.get("value")), f"{what}: {identifier}"
    position = location.get("position")
    if position is not None:
        for element in ("latitude", "longitude"):
            assert isinstance(position.get(element), int | float), f"{what}: position.{element}"


def _check_schedule(schedule: Resource, locations: set[str]) -> None:
    what = f"Schedule/{schedule['id']}"
    actors = schedule.get("actor")
    assert isinstance(actors, list) and len(actors) == 1, f"{what}: one actor"
    assert actors[0].get("reference") in locations, f"{what}: actor {actors[0]} is not a published Location"
    concepts = schedule.get("serviceType")
    assert isinstance(concepts, list) and concepts, f"{what}: serviceType"
    for concept in concepts:
        assert concept.get("coding") or _text(concept.get("text")), f"{what}: serviceType {concept}"


def _check_slot(slot: Resource, schedules: set[str]) -> None:
    what = f"Slot/{slot['id']}"
    assert (slot.get("schedule") or {}).get("reference") in schedules, (
        f"{what}: schedule {slot.get('schedule')}"
    )
    assert slot.get("status") == "free", f"{what}: status {slot.get('status')}"
    for element in ("start", "end"):
        assert isinstance(slot.get(element), str) and TIMESTAMP.fullmatch(slot[element]), f"{what}: {element}"
    assert datetime.fromisoformat(slot["start"]) < datetime.fromisoformat(slot["end"]), f"{what}: start < end"
    for extension in slot.get("extension") or []:
        value = SLOT_EXTENSIONS.get(extension.get("url"))
        assert value is not None, f"{what}: unknown extension {extension.get('url')}"
        assert set(extension) == {"url", value}, f"{what}: {extension}"
    links = [e for e in slot.get("extension") or [] if e["url"] == REGISTRY + "booking-deep-link"]
    assert len(links) == 1, f"{what}: one booking-deep-link"
    _check_url(links[0]["valueUrl"])
    for capacity in (e for e in slot.get("extension") or [] if e["url"] == REGISTRY + "slot-capacity"):
        assert isinstance(capacity["valueInteger"], int) and capacity["valueInteger"] >= 1, (
            f"{what}: {capacity}"
        )


def _check_url(url: object) -> None:
    assert isinstance(url, str), url
    parts = urlsplit(url)
    assert parts.scheme in ("http", "https") and parts.netloc, f"not an absolute URL: {url!r}"


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())
