// The public HTTP API, as any client calls it: bearer keys from the tab's session storage.

const KEY = 'qwen-serve.api-key';
const ADMIN = 'qwen-serve.admin-key';

export const keys = {
  get api() { return sessionStorage.getItem(KEY) || ''; },
  set api(v) { v ? sessionStorage.setItem(KEY, v) : sessionStorage.removeItem(KEY); },
  get admin() { return sessionStorage.getItem(ADMIN) || ''; },
  set admin(v) { v ? sessionStorage.setItem(ADMIN, v) : sessionStorage.removeItem(ADMIN); },
};

export class APIError extends Error {
  constructor(status, message, body) { super(message); this.status = status; this.body = body; }
}

const listeners = new Set();
/** Called with every APIError (the page shows 401/403 as a prompt for a key). */
export function onError(fn) { listeners.add(fn); }

function headers(admin, json) {
  const h = {};
  const key = admin ? (keys.admin || keys.api) : (keys.api || keys.admin);
  if (key) h['Authorization'] = 'Bearer ' + key;
  if (json) h['Content-Type'] = 'application/json';
  return h;
}

async function failure(res) {
  let body = null, message = `${res.status} ${res.statusText}`;
  try {
    body = await res.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch { /* not JSON */ }
  const e = new APIError(res.status, message, body);
  for (const fn of listeners) fn(e);
  return e;
}

/** `api('/v1/models')`, `api(path, {method, body, admin, signal})`; JSON in, JSON out. */
export async function api(path, { method = 'GET', body, admin = false, signal } = {}) {
  const isForm = body instanceof FormData;
  const res = await fetch(path, {
    method, signal, headers: headers(admin, body !== undefined && !isForm),
    body: body === undefined ? undefined : (isForm ? body : JSON.stringify(body)),
  });
  if (!res.ok) throw await failure(res);
  const type = res.headers.get('Content-Type') || '';
  return type.includes('json') ? res.json() : res.text();
}

/** Text of a route that is not JSON (`/metrics`). */
export async function text(path) {
  const res = await fetch(path, { headers: headers(false, false) });
  if (!res.ok) throw await failure(res);
  return res.text();
}

/**
 * POSTs a streaming request and calls `onEvent(json)` for each server-sent event until
 * `[DONE]`. Aborting `signal` closes the connection, and the server stops generating.
 */
export async function stream(path, body, onEvent, signal) {
  const res = await fetch(path, { method: 'POST', signal, headers: headers(false, true), body: JSON.stringify(body) });
  if (!res.ok) throw await failure(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (!data) continue; // a keep-alive comment
      if (data === '[DONE]') return;
      const event = JSON.parse(data);
      if (event.error) throw new APIError(500, event.error.message || 'the stream failed', event);
      onEvent(event);
    }
  }
}

/** Every model the server serves: base first, then adapters and fine-tunes. */
export async function models() {
  const list = await api('/v1/models');
  return list.data;
}

/** What kind of model an entry of /v1/models is. */
export function kindOf(m) {
  if (m.parent === null || m.parent === undefined) return 'base';
  if (m.id.includes(':ckpt-step-')) return 'checkpoint';
  if (m.id.startsWith('ft:')) return 'fine-tune';
  return 'adapter';
}
