// Chat: conversations kept in this browser (localStorage), streamed answers with a Stop button,
// Qwen3 reasoning in a collapsible block, and the token view (each token coloured by its
// probability, its alternatives on hover).

import { $, el, clear, status, tooltip } from './dom.js';
import { stream, kindOf } from './api.js';
import { renderMarkdown, splitThink } from './markdown.js';

const STORE = 'qwen-serve.conversations';
let conversations = load();
let current = conversations[0] || null;
let running = null; // {controller}

function load() {
  try {
    const v = JSON.parse(localStorage.getItem(STORE) || '[]');
    return Array.isArray(v) ? v : [];
  } catch { return []; }
}

function save() {
  try { localStorage.setItem(STORE, JSON.stringify(conversations)); }
  catch { // full: drop the token details of older answers, then try once more
    for (const c of conversations) for (const m of c.messages) if (m !== lastAssistant()) delete m.logprobs;
    try { localStorage.setItem(STORE, JSON.stringify(conversations)); } catch { /* kept in memory only */ }
  }
}

function lastAssistant() {
  const msgs = current ? current.messages : [];
  for (let i = msgs.length - 1; i >= 0; i--) if (msgs[i].role === 'assistant') return msgs[i];
  return null;
}

/** Fills a <select> with the served models, grouped by kind, keeping its choice if still served. */
export function fillModelSelect(select, list, preferred) {
  const keep = preferred || select.value;
  clear(select);
  const groups = { base: 'Base model', adapter: 'Adapters', 'fine-tune': 'Fine-tuned', checkpoint: 'Checkpoints' };
  for (const [kind, label] of Object.entries(groups)) {
    const items = list.filter((m) => kindOf(m) === kind);
    if (!items.length) continue;
    const g = el('optgroup', { label });
    for (const m of items) g.append(el('option', { value: m.id, text: m.id }));
    select.append(g);
  }
  if (list.some((m) => m.id === keep)) select.value = keep;
}

export function setModels(list) {
  fillModelSelect($('model-select'), list, current && current.model);
}

/** Opens a new conversation with `model` chosen (a checkpoint's "Open in Chat"). */
export function openWithModel(model) {
  newConversation();
  const select = $('model-select');
  if (![...select.options].some((o) => o.value === model)) select.append(el('option', { value: model, text: model }));
  select.value = model;
  current.model = model;
  save();
  location.hash = '#chat';
}

function newConversation() {
  current = { id: 'c' + Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: 'New conversation',
              created: Date.now(), model: $('model-select').value, messages: [] };
  conversations.unshift(current);
  save();
  renderList();
  renderLog();
}

function renderList() {
  const list = clear($('chat-list'));
  for (const c of conversations) {
    const li = el('li', { class: c === current ? 'active' : '', title: c.title, text: c.title });
    li.addEventListener('click', () => {
      if (running) return;
      current = c;
      if (c.model && [...$('model-select').options].some((o) => o.value === c.model)) $('model-select').value = c.model;
      renderList();
      renderLog();
    });
    list.append(li);
  }
}

function messageNode(m) {
  if (m.role === 'user') return el('div', { class: 'msg user', text: m.content });
  const box = el('div', { class: 'msg assistant' + (m.error ? ' error' : '') });
  const [inline, answer] = splitThink(m.content || '');
  const reasoning = m.reasoning || inline;
  if (reasoning) {
    const d = el('details', { class: 'reasoning', 'data-testid': 'chat-reasoning' }, el('summary', { text: 'Reasoning' }),
                 el('div', { text: reasoning }));
    box.append(d);
  }
  const body = el('div', { class: 'body' });
  if (m.error) body.textContent = m.error; else body.append(renderMarkdown(m.reasoning ? (m.content || '') : answer));
  body.dataset.raw = m.error || m.content || ''; // the answer as the model wrote it (what Copy copies)
  box.append(body);
  const meta = [];
  if (m.model) meta.push(m.model);
  if (m.usage) meta.push(`${m.usage.completion_tokens} tokens`);
  if (m.seconds && m.usage) meta.push(`${(m.usage.completion_tokens / m.seconds).toFixed(1)} tok/s`);
  if (m.finish) meta.push(m.finish);
  if (meta.length || m.content) {
    const line = el('div', { class: 'meta', text: meta.join(' · ') + ' ' });
    if (m.content && !m.pending) {
      const copy = el('button', { type: 'button', class: 'small', text: 'Copy' });
      copy.addEventListener('click', () => navigator.clipboard && navigator.clipboard.writeText(m.content));
      line.append(copy);
    }
    box.append(line);
  }
  box.body = body;
  return box;
}

function renderLog() {
  const log = clear($('chat-log'));
  if (!current) return;
  let lastBody = null;
  for (const m of current.messages) {
    const n = messageNode(m);
    log.append(n);
    if (m.role === 'assistant') lastBody = n.body;
  }
  if (lastBody) lastBody.setAttribute('data-testid', 'chat-output');
  log.scrollTop = log.scrollHeight;
  renderTokens();
}

/** Redraws only the answer being streamed (the rest of the log stays as it is). */
function redrawLast() {
  const log = $('chat-log');
  const old = log.lastElementChild;
  const m = current && current.messages[current.messages.length - 1];
  if (!old || !m || m.role !== 'assistant') return renderLog();
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const n = messageNode(m);
  n.body.setAttribute('data-testid', 'chat-output');
  old.replaceWith(n);
  if (atBottom) log.scrollTop = log.scrollHeight;
  if ($('chat-tokens').checked) renderTokens();
}

/** The latest answer's tokens, coloured by probability (green likely, red unlikely). */
function renderTokens() {
  const view = $('token-view');
  view.hidden = !$('chat-tokens').checked;
  clear(view);
  const m = lastAssistant();
  if (!m || !m.logprobs || !m.logprobs.length) {
    view.append(el('span', { class: 'stats', text: 'Send a message with Token view on to see each token\'s probability.' }));
    return;
  }
  for (const t of m.logprobs) {
    const p = Math.exp(t.logprob);
    const span = el('span', { class: 'tok', dataset: { logprob: t.logprob, token: t.token }, text: t.token });
    span.style.backgroundColor = `hsl(${Math.round(120 * p)}, 75%, 82%)`;
    tooltip(span, () => [`${JSON.stringify(t.token)}  p=${p.toFixed(4)}  logprob=${t.logprob.toFixed(4)}`,
      ...(t.top_logprobs || []).map((a) => `  ${JSON.stringify(a.token).padEnd(16)} ${Math.exp(a.logprob).toFixed(4)}  (${a.logprob.toFixed(3)})`)].join('\n'));
    view.append(span);
  }
}

function numberField(id) {
  const v = $(id).value.trim();
  return v === '' ? undefined : Number(v);
}

/** The request body for the conversation so far (system prompt, then the turns). */
function requestBody(model) {
  const messages = [];
  const system = $('chat-system').value.trim();
  if (system) messages.push({ role: 'system', content: system });
  for (const m of current.messages) {
    if (m.error || m.pending) continue;
    messages.push({ role: m.role, content: m.content });
  }
  const body = { model, messages, stream: true, stream_options: { include_usage: true } };
  const fields = { temperature: 'chat-temperature', top_p: 'chat-top-p', max_tokens: 'chat-max-tokens', seed: 'chat-seed' };
  for (const [k, id] of Object.entries(fields)) { const v = numberField(id); if (v !== undefined && !isNaN(v)) body[k] = v; }
  if ($('chat-tokens').checked) { body.logprobs = true; body.top_logprobs = 5; }
  return Object.assign(body, extraFields());
}

/** The "More request fields" JSON object (checked here; the server checks each field). */
function extraFields() {
  const raw = $('chat-extra').value.trim();
  if (!raw) return {};
  let v;
  try { v = JSON.parse(raw); } catch (e) { throw new Error(`More request fields: not JSON (${e.message})`); }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('More request fields: give a JSON object');
  for (const k of ['messages', 'stream', 'model']) delete v[k];
  return v;
}

/**
 * Streams one chat completion into `onText(content, reasoning, logprobs)`; returns
 * {usage, finish, seconds}. Shared with Compare.
 */
export async function streamChat(body, onText, signal) {
  let content = '', reasoning = '', usage = null, finish = null;
  const logprobs = [];
  const t0 = performance.now();
  await stream('/v1/chat/completions', body, (ev) => {
    if (ev.usage) usage = ev.usage;
    const c = ev.choices && ev.choices[0];
    if (!c) return;
    if (c.delta) {
      if (c.delta.content) content += c.delta.content;
      if (c.delta.reasoning_content) reasoning += c.delta.reasoning_content;
    }
    if (c.logprobs && c.logprobs.content) logprobs.push(...c.logprobs.content);
    if (c.finish_reason) finish = c.finish_reason;
    onText(content, reasoning, logprobs);
  }, signal);
  return { usage, finish, seconds: (performance.now() - t0) / 1000 };
}

async function send() {
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text || running) return;
  const model = $('model-select').value;
  try { extraFields(); } catch (e) { status($('chat-status'), e.message, 'error'); return; }
  status($('chat-status'), '');
  if (!current) newConversation();
  current.model = model;
  if (current.messages.length === 0) current.title = text.slice(0, 60);
  current.messages.push({ role: 'user', content: text });
  const answer = { role: 'assistant', content: '', reasoning: '', model, pending: true };
  const body = requestBody(model);
  current.messages.push(answer);
  input.value = '';
  renderList();
  renderLog();
  const controller = new AbortController();
  running = { controller };
  $('chat-send').disabled = true;
  $('chat-stop').disabled = false;
  let frame = 0;
  try {
    const done = await streamChat(body, (content, reasoning, logprobs) => {
      answer.content = content;
      answer.reasoning = reasoning;
      if (body.logprobs) answer.logprobs = logprobs;
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; redrawLast(); });
    }, controller.signal);
    answer.usage = done.usage;
    answer.finish = done.finish;
    answer.seconds = done.seconds;
  } catch (e) {
    if (e.name === 'AbortError') answer.finish = 'stopped';
    else answer.error = e.message;
  } finally {
    if (frame) cancelAnimationFrame(frame);
    delete answer.pending;
    running = null;
    $('chat-send').disabled = false;
    $('chat-stop').disabled = true;
    save();
    renderLog();
  }
}

function exportJSON() {
  const blob = new Blob([JSON.stringify(conversations, null, 2)], { type: 'application/json' });
  const a = el('a', { href: URL.createObjectURL(blob), download: 'qwen-serve-conversations.json' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

export function init() {
  $('chat-send').addEventListener('click', send);
  $('chat-stop').addEventListener('click', () => running && running.controller.abort());
  $('chat-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $('chat-new').addEventListener('click', () => { if (!running) newConversation(); });
  $('chat-export').addEventListener('click', exportJSON);
  $('chat-clear').addEventListener('click', () => {
    if (running || !confirm('Delete every conversation kept in this browser?')) return;
    conversations = [];
    current = null;
    save();
    renderList();
    renderLog();
  });
  $('chat-tokens').addEventListener('change', renderTokens);
  $('model-select').addEventListener('change', () => { if (current && !running) { current.model = $('model-select').value; save(); } });
  renderList();
  renderLog();
}
