// The calendar page: the token, the Schedule picker, the week, and one calendar per Schedule.
// State lives in the URL (?schedule=a&schedule=b&week=YYYY-MM-DD&service=x), never the token.

import { listSchedules, readWeek, setToken, token } from './api.js';
import { KINDS, drawCalendar, zoneText } from './calendar.js';
import { dialogOpen, initDialogs, openEventDialog, openSlotDialog } from './dialogs.js';

const { DateTime } = window.luxon;
const $ = (id) => document.getElementById(id);
const state = { schedules: [], selected: [], week: '', service: '', data: null, calendars: [], timer: null, loads: 0 };

function monday(isoDate) {
  const day = DateTime.fromISO(isoDate);
  return (day.isValid ? day : DateTime.now()).startOf('week').toISODate(); // Luxon weeks start on Monday
}

function status(text, isError = false) {
  $('status').textContent = text;
  $('status').className = isError ? 'error' : 'muted';
}

function saveUrl() {
  const query = new URLSearchParams();
  for (const id of state.selected) query.append('schedule', id);
  query.set('week', state.week);
  if (state.service) query.set('service', state.service);
  history.replaceState(null, '', `${location.pathname}?${query}`);
}

function drawLegend() {
  const legend = $('legend');
  legend.replaceChildren();
  for (const [kind, { label, color, background }] of Object.entries(KINDS)) {
    const item = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = `swatch${background ? ' background' : ''}`;
    swatch.style.setProperty('--swatch', color);
    item.dataset.kind = kind;
    item.append(swatch, document.createTextNode(label));
    legend.append(item);
  }
}

function drawPicker() {
  const picker = $('schedule-picker');
  picker.replaceChildren(Object.assign(document.createElement('legend'), { textContent: 'Schedules' }));
  for (const schedule of state.schedules) {
    const label = document.createElement('label');
    const box = Object.assign(document.createElement('input'), { type: 'checkbox', value: schedule.id });
    box.checked = state.selected.includes(schedule.id);
    box.addEventListener('change', () => {
      state.selected = state.schedules.map((s) => s.id).filter((id) => picker.querySelector(`input[value="${CSS.escape(id)}"]`).checked);
      load();
    });
    label.append(box, document.createTextNode(` ${schedule.display} `));
    const id = Object.assign(document.createElement('span'), { className: 'muted', textContent: `Schedule/${schedule.id}` });
    label.append(id);
    picker.append(label);
  }
  if (!state.schedules.length) picker.append(document.createTextNode('Your token may read no Schedule.'));
}

function drawServicePicker() {
  const select = $('service');
  const seen = new Map();
  for (const schedule of state.data.schedules) {
    for (const service of schedule.services || []) if (!service.error) seen.set(service.id, service.name);
  }
  if (!seen.has(state.service)) state.service = seen.keys().next().value || '';
  select.replaceChildren(...[...seen].map(([id, name]) => new Option(name, id, false, id === state.service)));
}

function heading(schedule) {
  const section = document.createElement('section');
  section.className = 'schedule';
  section.dataset.schedule = schedule.id;
  const h2 = document.createElement('h2');
  h2.textContent = `${schedule.display || schedule.id} `;
  h2.append(Object.assign(document.createElement('span'), { className: 'muted', textContent: `Schedule/${schedule.id}` }));
  section.append(h2);
  if (schedule.error) {
    section.append(Object.assign(document.createElement('p'), { className: 'error', textContent: schedule.error }));
    return section;
  }
  const zone = Object.assign(document.createElement('p'), { className: 'zone', textContent: `Times in ${zoneText(schedule)}` });
  zone.dataset.timeZone = schedule.timeZone;
  section.append(zone);
  const summary = document.createElement('ul');
  summary.className = 'services';
  for (const service of schedule.services) {
    const item = document.createElement('li');
    item.textContent = service.error
      ? `${service.name}: ${service.error}`
      : `${service.name} (${service.duration} min): ${service.freeStarts} free start${service.freeStarts === 1 ? '' : 's'} this week`;
    if (service.error) item.className = 'error';
    summary.append(item);
  }
  if (!schedule.active) summary.append(Object.assign(document.createElement('li'), { className: 'error', textContent: 'This Schedule is not active.' }));
  for (const text of schedule.notices) summary.append(Object.assign(document.createElement('li'), { className: 'error', textContent: text }));
  section.append(summary);
  return section;
}

function drawCalendars() {
  for (const calendar of state.calendars) calendar.destroy();
  state.calendars = [];
  const main = $('calendars');
  main.replaceChildren();
  const handlers = { onSelect: openSlotDialog, onEvent: openEventDialog };
  for (const schedule of state.data.schedules) {
    const section = heading(schedule);
    main.append(section);
    if (schedule.error) continue;
    const element = document.createElement('div');
    element.className = 'calendar';
    section.append(element);
    state.calendars.push(drawCalendar(element, schedule, state.week, state.service, handlers));
  }
  document.body.dataset.loaded = state.data.now; // the browser test waits for this
}

/** Reload when the first live hold lapses, so a hold is never drawn after its expiry. */
function refreshAtNextExpiry() {
  clearTimeout(state.timer);
  const expiries = state.data.schedules.flatMap((s) => (s.events || []).filter((e) => e.expires).map((e) => DateTime.fromISO(e.expires)));
  if (!expiries.length) return;
  const wait = Math.max(1000, DateTime.min(...expiries).diffNow().milliseconds + 1000);
  state.timer = setTimeout(() => (dialogOpen() ? refreshAtNextExpiry() : load()), Math.min(wait, 2 ** 31 - 1));
}

async function load(message = '') {
  saveUrl();
  $('week').value = state.week;
  if (!state.selected.length) {
    $('calendars').replaceChildren();
    status('Choose one or more Schedules.');
    return;
  }
  status('Loading…');
  const mine = ++state.loads; // only the latest load draws: an earlier answer may come later
  let data;
  try {
    data = await readWeek(state.selected, state.week);
  } catch (error) {
    if (mine === state.loads) status(error.message, true);
    return;
  }
  if (mine !== state.loads) return;
  state.data = data;
  drawServicePicker();
  saveUrl();
  drawCalendars();
  refreshAtNextExpiry();
  status(message || `Shown at ${DateTime.fromISO(state.data.now).toLocal().toFormat('HH:mm:ss')}: drag across a calendar to block time or add availability; click a visit to cancel it.`);
}

async function loadSchedules() {
  try {
    state.schedules = (await listSchedules()).schedules;
  } catch (error) {
    state.schedules = [];
    status(error.message, true);
  }
  const known = new Set(state.schedules.map((s) => s.id));
  for (const id of state.selected) if (!known.has(id)) state.schedules.push({ id, display: id });
  if (!state.selected.length) state.selected = state.schedules.slice(0, 3).map((s) => s.id);
  drawPicker();
}

function showTokenState() {
  $('token-state').textContent = token() ? 'a token is set for this tab' : 'no token: requests go without Authorization';
}

async function start() {
  const query = new URLSearchParams(location.search);
  state.selected = query.getAll('schedule').flatMap((v) => v.split(',')).filter(Boolean);
  state.week = monday(query.get('week') || DateTime.now().toISODate());
  state.service = query.get('service') || '';
  drawLegend();
  showTokenState();
  initDialogs((message) => load(message));
  $('token-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    setToken($('token').value);
    $('token').value = '';
    showTokenState();
    await loadSchedules();
    load();
  });
  $('forget-token').addEventListener('click', () => {
    setToken('');
    showTokenState();
  });
  const shift = (days) => {
    state.week = DateTime.fromISO(state.week).plus({ days }).toISODate();
    load();
  };
  $('prev-week').addEventListener('click', () => shift(-7));
  $('next-week').addEventListener('click', () => shift(7));
  $('this-week').addEventListener('click', () => {
    state.week = monday(DateTime.now().toISODate());
    load();
  });
  $('week').addEventListener('change', () => {
    state.week = monday($('week').value);
    load();
  });
  $('reload').addEventListener('click', () => load());
  $('service').addEventListener('change', () => {
    state.service = $('service').value;
    saveUrl();
    drawCalendars();
  });
  await loadSchedules();
  await load();
}

start();
