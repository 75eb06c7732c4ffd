// The two dialogs: change a span of time (block it, or add availability), and look at one
// drawn thing (cancel a visit or a hold, remove a block or added availability).

import { cancelAppointment, removeSlot, writeSlot } from './api.js';
import { KINDS } from './calendar.js';

const { DateTime } = window.luxon;
const $ = (id) => document.getElementById(id);

let onChanged = () => {};
let current = null;

export function initDialogs(changed) {
  onChanged = changed;
  $('slot-block').addEventListener('click', () => submitSlot('block'));
  $('slot-free').addEventListener('click', () => submitSlot('availability'));
  $('slot-close').addEventListener('click', () => $('slot-dialog').close());
  $('event-close').addEventListener('click', () => $('event-dialog').close());
  $('event-cancel').addEventListener('click', cancelVisit);
  $('event-remove').addEventListener('click', removeThing);
}

export function dialogOpen() {
  return $('slot-dialog').open || $('event-dialog').open;
}

/** Open the span dialog on a selection (ISO strings with offsets) or on defaults. */
export function openSlotDialog(schedule, startIso, endIso) {
  const zone = schedule.timeZone;
  const start = DateTime.fromISO(startIso).setZone(zone);
  const end = DateTime.fromISO(endIso).setZone(zone);
  current = { schedule };
  $('slot-schedule').textContent = `${schedule.display || schedule.id} (Schedule/${schedule.id})`;
  $('slot-zone').textContent = zone;
  $('slot-date').value = start.toISODate();
  $('slot-from').value = start.toFormat('HH:mm');
  $('slot-to').value = end.hasSame(start, 'day') ? end.toFormat('HH:mm') : '23:59';
  $('slot-comment').value = '';
  $('slot-error').textContent = '';
  const services = $('slot-service');
  services.replaceChildren(new Option('every service', ''));
  for (const service of schedule.services.filter((s) => !s.error)) services.add(new Option(service.name, service.id));
  $('slot-dialog').showModal();
}

async function submitSlot(kind) {
  const { schedule } = current;
  const zone = schedule.timeZone;
  const date = $('slot-date').value;
  // Wall-clock times in the Schedule's zone, whatever zone the browser is in.
  const start = DateTime.fromISO(`${date}T${$('slot-from').value}`, { zone });
  const end = DateTime.fromISO(`${date}T${$('slot-to').value}`, { zone });
  if (!start.isValid || !end.isValid || end <= start) {
    $('slot-error').textContent = 'Give a date and a start before the end.';
    return;
  }
  const service = kind === 'availability' ? $('slot-service').value : '';
  try {
    await writeSlot(kind, schedule.id, start.toISO(), end.toISO(), $('slot-comment').value, service);
  } catch (error) {
    $('slot-error').textContent = error.message;
    return;
  }
  $('slot-dialog').close();
  onChanged(`${KINDS[kind].label}: ${start.toFormat('ccc d LLL HH:mm')}–${end.toFormat('HH:mm')} (${zone})`);
}

function detail(term, value) {
  if (!value) return;
  const dt = document.createElement('dt');
  dt.textContent = term;
  const dd = document.createElement('dd');
  dd.textContent = value;
  $('event-details').append(dt, dd);
}

export function openEventDialog(schedule, item) {
  const zone = schedule.timeZone;
  const at = (iso) => DateTime.fromISO(iso).setZone(zone).toFormat('ccc d LLL yyyy HH:mm');
  current = { schedule, item };
  $('event-title').textContent = KINDS[item.kind].label;
  $('event-details').replaceChildren();
  detail('When', `${at(item.start)}–${DateTime.fromISO(item.end).setZone(zone).toFormat('HH:mm')} (${zone})`);
  detail('Schedule', `${schedule.display || ''} (Schedule/${schedule.id})`);
  detail('Service', item.service || (item.services || []).join(', '));
  detail('Patient', (item.patients || []).join(', '));
  detail('Status', item.status);
  detail('Hold expires', item.expires ? at(item.expires) : '');
  detail('Comment', item.comment);
  detail('Resource', item.appointment || item.slot);
  const cancellable = item.kind === 'visit' || item.kind === 'hold';
  const removable = item.kind === 'block' || item.kind === 'availability';
  $('event-cancel').hidden = !cancellable;
  $('event-cancel').textContent = item.kind === 'hold' ? 'Release hold' : 'Cancel visit';
  $('event-reason-label').hidden = !cancellable;
  $('event-reason').value = '';
  $('event-remove').hidden = !removable;
  $('event-error').textContent = '';
  $('event-dialog').showModal();
}

async function act(action, done) {
  try {
    await action();
  } catch (error) {
    $('event-error').textContent = error.message;
    return;
  }
  $('event-dialog').close();
  onChanged(done);
}

function cancelVisit() {
  const { item } = current;
  act(() => cancelAppointment(item.appointment, $('event-reason').value.trim()), `${item.appointment} cancelled`);
}

function removeThing() {
  const { item } = current;
  act(() => removeSlot(item.slot), `${item.slot} removed`);
}
