// Every call the page makes, with the administrator's own Authorization (docs/admin.md).
// The token lives in this tab's sessionStorage only: closing the tab forgets it, and it is
// never put in a URL or a cookie.

const TOKEN_KEY = 'fanoni.admin.authorization';
const config = document.body.dataset;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

/** Store what was typed; a bare token gets the Bearer scheme. Empty forgets it. */
export function setToken(value) {
  const trimmed = (value || '').trim();
  if (!trimmed) {
    sessionStorage.removeItem(TOKEN_KEY);
    return '';
  }
  const header = /\s/.test(trimmed) ? trimmed : `Bearer ${trimmed}`;
  sessionStorage.setItem(TOKEN_KEY, header);
  return header;
}

function outcomeText(body) {
  if (body && body.resourceType === 'OperationOutcome' && Array.isArray(body.issue)) {
    return body.issue.map((issue) => issue.diagnostics || issue.code).filter(Boolean).join('; ');
  }
  return '';
}

async function call(method, url, body, contentType = 'application/json') {
  const headers = { Accept: 'application/fhir+json' };
  const authorization = token();
  if (authorization) headers.Authorization = authorization;
  if (body !== undefined) headers['Content-Type'] = contentType;
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    let text = outcomeText(data) || response.statusText;
    if (response.status === 401) text = `The FHIR server does not accept this token (401): ${text}`;
    if (response.status === 403) text = `Your token may not do this (403): ${text}`;
    throw new ApiError(response.status, text);
  }
  return data;
}

export function listSchedules() {
  return call('GET', `${config.api}/schedules`);
}

export function readWeek(scheduleIds, start, days = 7) {
  const query = new URLSearchParams();
  for (const id of scheduleIds) query.append('schedule', id);
  query.set('start', start);
  query.set('days', String(days));
  return call('GET', `${config.api}/week?${query}`);
}

/** kind: 'block' (busy-unavailable) or 'availability' (free). */
export function writeSlot(kind, schedule, start, end, comment, service) {
  return call('POST', `${config.api}/slots`, { kind, schedule, start, end, comment, service: service || undefined });
}

export function removeSlot(slotReference) {
  const id = slotReference.replace(/^Slot\//, '');
  return call('DELETE', `${config.api}/slots/${encodeURIComponent(id)}`);
}

/** The sidecar's own $cancel operation: the same rules as for any client. */
export function cancelAppointment(appointmentReference, reason) {
  const id = appointmentReference.replace(/^Appointment\//, '');
  const parameters = { resourceType: 'Parameters', parameter: [] };
  if (reason) parameters.parameter.push({ name: 'cancelationReason', valueString: reason });
  return call(
    'POST',
    `${config.fhirBase}/Appointment/${encodeURIComponent(id)}/$cancel`,
    parameters,
    'application/fhir+json',
  );
}
