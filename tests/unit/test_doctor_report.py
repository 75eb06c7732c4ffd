"""The doctor's output and command line: the report for people and for machines, exit
statuses, the progress bar, the options, and every finding code documented."""

from __future__ import annotations

import argparse
import io
import json
import re

import pytest

from plugin import cli, doctor
from plugin.doctor_findings import CODES, Finding, ordered
from plugin.doctor_report import Run, as_json, as_text
from tests.integration.processes import REPO
from tests.unit.test_doctor_config import clinic_data

ERROR = Finding("schedule-actor-count", "Schedule/b", "Schedule.actor[1]", "Schedule/b has 2 actors")
OTHER = Finding("slot-without-appointment", "Slot/s", "Slot", "Slot/s takes time")
WARNING = Finding("hold-stuck", "Appointment/h", "Appointment.extension[0]", "a lapsed hold")


def a_run(*findings: Finding, strict: bool = False) -> Run:
    return Run(
        "http://hapi/fhir",
        "sidecar",
        clinic_data(),
        list(findings),
        round_trips=7,
        seconds=0.25,
        strict=strict,
    )


def test_every_code_is_documented_with_its_severity() -> None:
    text = (REPO / "docs" / "doctor.md").read_text()
    for code, meaning in CODES.items():
        assert re.search(rf"^### `{re.escape(code)}` \({meaning.severity}\)$", text, re.MULTILINE), code


def test_unknown_codes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown finding code"):
        Finding("no-such-code", "Schedule/a", "Schedule", "?")


def test_findings_are_ordered_errors_first_then_by_resource_and_once_each() -> None:
    assert ordered([WARNING, OTHER, ERROR, ERROR]) == [ERROR, OTHER, WARNING]


def test_exit_status_errors_fail_warnings_only_when_strict() -> None:
    assert a_run().exit_status == 0
    assert a_run(WARNING).exit_status == 0
    assert a_run(WARNING, strict=True).exit_status == 1
    assert a_run(ERROR, WARNING).exit_status == 1


def test_json_schema() -> None:
    document = json.loads(as_json(a_run(WARNING, ERROR)))
    assert document["schemaVersion"] == 1
    assert document["summary"] == {"errors": 1, "warnings": 1}
    assert document["exitStatus"] == 1
    assert document["read"] == {
        "schedules": 0,
        "healthcareServices": 0,
        "actors": 0,
        "slots": 0,
        "appointments": 0,
        "roundTrips": 7,
        "seconds": 0.25,
    }
    assert document["window"] == {"start": "2027-02-28T12:00:00Z", "end": "2027-04-30T12:00:00Z"}
    assert document["findings"][0] == {
        "code": "schedule-actor-count",
        "severity": "error",
        "resource": "Schedule/b",
        "expression": "Schedule.actor[1]",
        "message": "Schedule/b has 2 actors",
        "hint": CODES["schedule-actor-count"].hint,
    }


def test_text_report_groups_by_severity_and_resource() -> None:
    text = as_text(a_run(WARNING, OTHER, ERROR))
    assert text.splitlines()[:2] == [
        "fanoni-scheduling doctor: http://hapi/fhir (with the sidecar's own credentials)",
        "Read 0 Schedules, 0 HealthcareServices, 0 actors, 0 Slots and 0 Appointments "
        "from 2027-02-28T12:00Z to 2027-04-30T12:00Z (7 round trips, 0.2 s).",
    ]
    assert (
        "2 ERRORS\n"
        "  Schedule/b\n"
        "    schedule-actor-count at Schedule.actor[1]\n"
        "      Schedule/b has 2 actors\n"
        f"      fix: {CODES['schedule-actor-count'].hint}\n"
        "  Slot/s\n"
    ) in text
    assert "\n1 WARNING\n  Appointment/h\n" in text
    assert text.endswith("2 errors, 1 warning: scheduling is wrong (codes explained in docs/doctor.md).")
    assert as_text(a_run()).endswith("\nNo problems found.")
    assert as_text(a_run(WARNING)).endswith(
        "0 errors, 1 warning: nothing is booked wrong, but look at the warnings (codes explained in docs/doctor.md)."
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_draws_only_on_a_terminal() -> None:
    for stream, drawn in ((Terminal(), True), (io.StringIO(), False)):
        progress = doctor.Progress(stream)
        progress.phase("Slots")
        progress.page("Slot", 1000, 2500)
        progress.page("Slot", 1000, None)
        progress.close()
        assert ("Slots" in stream.getvalue() and "2000/2500" in stream.getvalue()) is drawn
    quiet = Terminal()
    off = doctor.Progress(quiet, enabled=False)
    off.phase("Slots")
    off.page("Slot", 1, None)
    assert quiet.getvalue() == ""


def parse(*args: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["doctor", *args])


def test_options() -> None:
    args = parse("--schedule", "Schedule/a,b", "--schedule", "c", "--days", "14", "--json")
    assert args.schedule == [["a", "b"], ["c"]]
    assert (args.days, args.past_days, args.json, args.strict, args.hold_grace) == (14, 1, True, False, None)
    for bad in (
        ["--schedule", "Practitioner/x"],
        ["--schedule", "a b"],
        ["--days", "-1"],
        ["--page-size", "0"],
    ):
        with pytest.raises(SystemExit) as exit_:
            parse(*bad)
        assert exit_.value.code == 2


def test_authorization_values() -> None:
    stdin = io.StringIO("Basic dXNlcjpwYXNz\n")
    assert doctor._authorization(None, stdin) is None
    assert doctor._authorization("abc", stdin) == "Bearer abc"
    assert doctor._authorization("Bearer abc", stdin) == "Bearer abc"
    assert doctor._authorization("-", stdin) == "Basic dXNlcjpwYXNz"


def run(*args: str, environ: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = doctor.run(parse(*args), environ=environ, stdout=out, stderr=err, stdin=io.StringIO(""))
    return status, out.getvalue(), err.getvalue()


def test_configuration_errors_exit_2() -> None:
    status, out, err = run(environ={})
    assert (status, out) == (2, "")
    assert "configuration error: FHIR_BASE_URL is required" in err
    status, _, err = run("--authorization", "-", environ={"FHIR_BASE_URL": "http://127.0.0.1:1/fhir"})
    assert status == 2 and "--authorization must be" in err


def test_an_unreachable_upstream_exits_2() -> None:
    # Port 1 on the loopback: nothing listens there, the connection is refused at once.
    status, out, err = run("--fhir-base-url", "http://127.0.0.1:1/fhir", environ={})
    assert (status, out) == (2, "")
    assert err.startswith("fanoni-scheduling doctor: reading http://127.0.0.1:1/fhir failed: ")
    assert "unreachable" in err
