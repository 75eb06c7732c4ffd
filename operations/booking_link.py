"""The booking deep link of a published Slot (SPEC §7.5): a configured URL template whose
placeholders are filled with the Slot's Schedule, service and times, each URL-encoded.

``https://portal.example.org/book?schedule={schedule}&service={service}&start={start}`` becomes
``https://portal.example.org/book?schedule=dr-alice&service=office-visit&start=2026-03-02T09%3A00%3A00-05%3A00``.
The template is checked once, when the sidecar starts: a template that does not parse, names an
unknown placeholder or is not an absolute http(s) URL never reaches a published Slot.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

PLACEHOLDERS = ("schedule", "service", "start", "end", "slot")
"""What a template may name: the Schedule id, the HealthcareService id, the visit's start and
end (FHIR instants in the Schedule's time zone) and the published Slot's id."""

REQUIRED = ("start",)
"""A link that does not carry the time cannot take the patient to that time."""


class LinkTemplateError(ValueError):
    """The template cannot make booking links; the message says why."""


@dataclass(frozen=True)
class BookingLinkTemplate:
    """A checked URL template (build it with :meth:`parse`)."""

    template: str

    @classmethod
    def parse(cls, template: str) -> BookingLinkTemplate:
        """Check ``template``; :class:`LinkTemplateError` says what is wrong with it."""
        try:
            fields = list(string.Formatter().parse(template))
        except ValueError as exc:  # "Single '}' encountered", "unmatched '{'", ...
            raise LinkTemplateError(
                f"it does not parse ({exc}); write a literal brace as {{{{ or }}}}"
            ) from None
        named: set[str] = set()
        for _literal, name, spec, conversion in fields:
            if name is None:
                continue
            if name not in PLACEHOLDERS:
                raise LinkTemplateError(
                    f"unknown placeholder {{{name}}}; use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                )
            if spec or conversion:
                raise LinkTemplateError(f"placeholder {{{name}}} takes no format or conversion")
            named.add(name)
        missing = [p for p in REQUIRED if p not in named]
        if missing:
            raise LinkTemplateError(
                f"it must contain {{{missing[0]}}}: a link has to say which time it books"
            )
        parsed = cls(template)
        sample = urlsplit(parsed.render(schedule="s", service="s", start="t", end="t", slot="s"))
        if sample.scheme not in ("http", "https") or not sample.netloc:
            raise LinkTemplateError(
                "it must be an absolute http(s) URL, such as https://portal.example.org/book?start={start}"
            )
        return parsed

    def render(self, *, schedule: str, service: str, start: str, end: str, slot: str) -> str:
        """The link for one Slot; every value is percent-encoded (nothing is left "safe"), so a
        value can never end a query parameter or a path segment early."""
        values = {"schedule": schedule, "service": service, "start": start, "end": end, "slot": slot}
        return self.template.format(**{name: quote(value, safe="") for name, value in values.items()})
