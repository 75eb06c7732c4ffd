"""Print what the last reliability run measured as Markdown tables (for docs/reliability.md):

.venv/bin/pytest -q tests/reliability
.venv/bin/python -m tests.reliability.report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "build" / "test-logs" / "reliability-results.jsonl"
PROBLEMS = ("partial_writes", "orphan_slots", "stranded_slots", "overlaps")


def scan_cell(scan: dict[str, Any] | None) -> str:
    if not scan:
        return ""
    statuses = ", ".join(
        f"{v} {k.removeprefix('appointments_')}" for k, v in scan.items() if k.startswith("appointments_")
    )
    problems = sum(int(scan.get(k, 0)) for k in PROBLEMS)
    return f"{scan.get('appointments', 0)} Appt ({statuses or 'none'}), {scan.get('slots', 0)} Slots, {problems} problems"


def main(path: Path = RESULTS) -> int:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print("| test | fault | HAPI | answer | issue.code | diagnostics | s | retry | scan |")
    print("|---|---|---|---|---|---|---|---|---|")
    load = []
    for line in lines:
        if "requests" in line:
            load.append(line)
            continue
        print(
            "| {test} | {fault} | {hapi} | {answer} | {code} | {diagnostics} | {seconds} | {retry} | {scan} |".format(
                test=line["test"].removeprefix("test_"),
                fault=line.get("fault") or line.get("order", ""),
                hapi=line.get("upstream_status", line.get("old_transaction_at_hapi", "")),
                answer=line.get("answer", line.get("client_saw", "")),
                code=line.get("code") or "",
                diagnostics=(line.get("diagnostics") or "").split(" or quote request id")[0],
                seconds=line.get("seconds", ""),
                retry=line.get("retry", line.get("after_resume", line.get("cancel_again", ""))),
                scan=scan_cell(line.get("scan")),
            )
        )
    for line in load:
        print()
        for key, value in line.items():
            print(f"- {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS))
