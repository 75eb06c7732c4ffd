// One FullCalendar week per Schedule, drawn in that Schedule's time zone (the Luxon plugin
// does the zone arithmetic, so a DST week keeps 09:00 at 09:00 on both sides of the change).

const { DateTime } = window.luxon;

/** Every kind of thing drawn, its colour and its legend text: the legend is built from this. */
export const KINDS = {
  opening: { label: 'Opening hours', color: '#f6d860', background: true },
  free: { label: 'Free time ($find would offer it)', color: '#38a169', background: true },
  visit: { label: 'Booked visit', color: '#2b6cb0' },
  hold: { label: 'Hold (until it expires)', color: '#dd6b20' },
  block: { label: 'Blocked', color: '#c53030' },
  buffer: { label: 'Buffer around a visit', color: '#4a5568', background: true },
  availability: { label: 'One-time availability', color: '#2f855a' },
  busy: { label: 'Busy Slot without a visit', color: '#6b46c1' },
};

/** The expiry's wall-clock time, with its date when that is not the held day's. */
function until(event, zone) {
  const expires = DateTime.fromISO(event.expires).setZone(zone);
  const sameDay = expires.hasSame(DateTime.fromISO(event.start).setZone(zone), 'day');
  return expires.toFormat(sameDay ? 'HH:mm:ss' : 'd LLL HH:mm:ss');
}

function title(event, zone) {
  switch (event.kind) {
    case 'visit':
      return [event.service || 'Visit', event.patients.join(', ') || event.appointment].join(' · ');
    case 'hold':
      return `Hold · until ${until(event, zone)}${event.service ? ` · ${event.service}` : ''}`;
    case 'block':
      return `Blocked · ${event.comment || ''}`;
    case 'buffer':
      return 'Buffer';
    case 'availability':
      return `Extra time · ${event.services.join(', ') || 'every service'}`;
    default:
      return `Busy · ${event.slot}`;
  }
}

function background(kind, spans, serviceId) {
  return spans.map((span) => ({
    start: span.start,
    end: span.end,
    display: 'background',
    color: KINDS[kind].color,
    classNames: [`kind-${kind}`],
    extendedProps: { kind, service: serviceId, start: span.start, end: span.end },
  }));
}

/** FullCalendar's events for one Schedule: opening hours and free time of the chosen service
 *  as background, then everything stored. Times keep the offsets the sidecar wrote. */
export function calendarEvents(schedule, serviceId) {
  const events = [];
  const service = schedule.services.find((s) => s.id === serviceId && !s.error);
  if (service) {
    events.push(...background('opening', service.opening, service.id));
    events.push(...background('free', service.free, service.id));
  }
  for (const item of schedule.events) {
    if (item.kind === 'buffer') {
      // Drawn behind: a 5-minute box would otherwise push its visit aside.
      events.push(...background('buffer', [item], null).map((e) => ({ ...e, extendedProps: item })));
      continue;
    }
    events.push({
      start: item.start,
      end: item.end,
      title: title(item, schedule.timeZone),
      color: KINDS[item.kind].color,
      classNames: [`kind-${item.kind}`],
      extendedProps: item,
    });
  }
  return events;
}

/** The hours to draw: the opening hours and events of the week, an hour either side. */
function visibleHours(schedule) {
  let low = 8;
  let high = 18;
  const spans = [...schedule.events, ...schedule.services.flatMap((s) => s.opening || [])];
  for (const span of spans) {
    const start = DateTime.fromISO(span.start).setZone(schedule.timeZone);
    const end = DateTime.fromISO(span.end).setZone(schedule.timeZone);
    if (!start.hasSame(end.minus({ milliseconds: 1 }), 'day')) return ['00:00:00', '24:00:00'];
    low = Math.min(low, start.hour - 1);
    high = Math.max(high, end.hour + (end.minute > 0 ? 2 : 1));
  }
  const pad = (n) => String(Math.max(0, Math.min(24, n))).padStart(2, '0');
  return [`${pad(low)}:00:00`, `${pad(high)}:00:00`];
}

export function drawCalendar(element, schedule, weekStart, serviceId, handlers) {
  const [slotMinTime, slotMaxTime] = visibleHours(schedule);
  const calendar = new window.FullCalendar.Calendar(element, {
    timeZone: schedule.timeZone,
    initialView: 'timeGridWeek',
    initialDate: weekStart,
    firstDay: 1,
    headerToolbar: false,
    allDaySlot: false,
    height: 'auto',
    expandRows: true,
    slotMinTime,
    slotMaxTime,
    slotDuration: '00:30:00',
    snapDuration: '00:15:00',
    nowIndicator: true,
    selectable: true,
    selectMirror: true,
    eventOverlap: true,
    slotLabelFormat: { hour: '2-digit', minute: '2-digit', hour12: false },
    eventTimeFormat: { hour: '2-digit', minute: '2-digit', hour12: false },
    dayHeaderFormat: { weekday: 'short', day: 'numeric', month: 'short' },
    events: calendarEvents(schedule, serviceId),
    select: (info) => {
      handlers.onSelect(schedule, info.startStr, info.endStr);
      calendar.unselect();
    },
    eventClick: (info) => {
      if (info.event.display !== 'background') handlers.onEvent(schedule, info.event.extendedProps);
    },
    eventDidMount: (info) => {
      // What the page drew, for people reading the DOM and for the browser test.
      const props = info.event.extendedProps;
      if (!props.kind) return; // the mirror of a selection being dragged
      info.el.dataset.kind = props.kind;
      info.el.dataset.start = props.start;
      info.el.dataset.end = props.end;
      if (props.appointment) info.el.dataset.appointment = props.appointment;
      if (props.slot) info.el.dataset.slot = props.slot;
      if (props.expires) info.el.dataset.expires = props.expires;
      info.el.title = info.event.title || KINDS[props.kind].label;
    },
  });
  calendar.render();
  return calendar;
}

/** "America/New_York (UTC−05:00, UTC−04:00 from Sun 8 Mar)" for the Schedule's heading. */
export function zoneText(schedule) {
  const zone = schedule.timeZone;
  const first = DateTime.fromISO(schedule.start).setZone(zone);
  const last = DateTime.fromISO(schedule.end).setZone(zone).minus({ seconds: 1 });
  const offset = (dt) => `UTC${dt.toFormat('ZZ')}`;
  if (first.offset === last.offset) return `${zone} (${offset(first)})`;
  let day = first.startOf('day');
  while (day.plus({ days: 1 }).offset === first.offset && day < last) day = day.plus({ days: 1 });
  // The offset at the next midnight differs: the clocks change during `day`.
  return `${zone} (${offset(first)}, ${offset(last)} from ${day.toFormat('ccc d LLL')}: the clocks change this week)`;
}
