// Fine-tuning: upload a JSONL (the server's line-by-line check shown), start a job, follow it
// live — loss, accuracy, learning rate and tokens/s charts from its metrics events, ETA, the
// event log, checkpoints that open in Chat — and pause, resume or cancel it.

import { $, el, clear, status, fmtTime, fmtDuration } from './dom.js';
import { api, kindOf } from './api.js';
import { lineChart } from './charts.js';
import { openWithModel } from './chat.js';

let baseModel = '';
let job = null;        // the job page's job id, or null on the list
let events = new Map(); // id -> event, of the open job
let ordered = [];       // its events, newest first, in the server's order
let timer = null;
let visible = false;

const modelsChanged = () => document.dispatchEvent(new Event('models-changed'));

export function setModels(list) {
  const base = list.find((m) => kindOf(m) === 'base');
  if (base) baseModel = base.id;
}

async function upload(file) {
  const out = $('upload-status');
  if (!file) return;
  status(out, `Uploading ${file.name}…`);
  const form = new FormData();
  form.append('purpose', 'fine-tune');
  form.append('file', file, file.name);
  try {
    const f = await api('/v1/files', { method: 'POST', body: form, admin: true });
    if (f.status === 'error') status(out, `${f.filename}: ${f.status_details}`, 'error');
    else status(out, `${f.filename}: ${f.lines ?? '?'} examples, longest ${f.max_tokens ?? '?'} tokens (${f.id})`, 'ok');
  } catch (e) {
    status(out, `${file.name}: ${e.message}`, 'error');
  }
  $('job-upload').value = '';
  await refreshFiles();
}

async function refreshFiles() {
  let files;
  try { files = (await api('/v1/files?purpose=fine-tune&limit=100', { admin: true })).data; } catch { return; }
  const table = clear($('files-table'));
  for (const f of files) {
    const del = el('button', { type: 'button', text: 'Delete' });
    del.addEventListener('click', async () => {
      try { await api(`/v1/files/${encodeURIComponent(f.id)}`, { method: 'DELETE', admin: true }); } catch (e) { status($('upload-status'), e.message, 'error'); }
      refreshFiles();
    });
    table.append(el('tr', {}, el('td', { text: f.filename }), el('td', { text: f.status, title: f.status_details || '' }),
                    el('td', { text: f.lines ?? '' }), el('td', { text: f.id }), el('td', {}, del)));
  }
  const usable = files.filter((f) => f.status === 'processed');
  for (const [id, optional] of [['job-train', false], ['job-valid', true]]) {
    const select = $(id);
    const keep = select.value;
    clear(select);
    if (optional) select.append(el('option', { value: '', text: '(none)' }));
    for (const f of usable) select.append(el('option', { value: f.id, text: `${f.filename} (${f.lines ?? '?'} examples)` }));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }
}

async function createJob(e) {
  e.preventDefault();
  const out = $('job-create-status');
  const hp = {};
  for (const [k, id] of [['n_epochs', 'job-epochs'], ['batch_size', 'job-batch'], ['learning_rate_multiplier', 'job-lr'],
                         ['rank', 'job-rank'], ['checkpoint_every', 'job-every']]) {
    const v = $(id).value.trim();
    if (v !== '') hp[k] = Number(v);
  }
  const body = { model: baseModel, training_file: $('job-train').value, hyperparameters: hp };
  if ($('job-valid').value) body.validation_file = $('job-valid').value;
  if ($('job-suffix').value.trim()) body.suffix = $('job-suffix').value.trim();
  if ($('job-seed').value.trim()) body.seed = Number($('job-seed').value);
  if (!body.training_file) { status(out, 'Upload a training file first.', 'error'); return; }
  try {
    const j = await api('/v1/fine_tuning/jobs', { method: 'POST', body, admin: true });
    status(out, `Created ${j.id}`, 'ok');
    openJob(j.id);
  } catch (err) {
    status(out, (err.body && err.body.error && err.body.error.param ? err.body.error.param + ': ' : '') + err.message, 'error');
  }
}

function progress(j) {
  if (!j.total_steps) return '';
  const step = j.step || 0;
  return `${step}/${j.total_steps} steps (${Math.round(100 * step / j.total_steps)}%)`;
}

async function refreshJobs() {
  let jobs;
  try { jobs = (await api('/v1/fine_tuning/jobs?limit=100', { admin: true })).data; } catch { return; }
  const table = clear($('jobs-table'));
  for (const j of jobs) {
    const row = el('tr', { class: 'link', dataset: { job: j.id } }, el('td', { text: j.id }),
                   el('td', {}, el('span', { class: 'pill ' + j.status, text: j.status })), el('td', { text: progress(j) }),
                   el('td', { text: j.fine_tuned_model || '' }), el('td', { text: fmtTime(j.created_at) }));
    row.addEventListener('click', () => openJob(j.id));
    table.append(row);
  }
}

function openJob(id) {
  job = id;
  events = new Map();
  ordered = [];
  $('tuning-list').hidden = true;
  $('job-page').hidden = false;
  clear($('job-events'));
  clear($('job-checkpoints'));
  $('job-title').textContent = id;
  tick();
}

function closeJob() {
  job = null;
  $('tuning-list').hidden = false;
  $('job-page').hidden = true;
  tick();
}

/** New events since the last poll: pages back from the newest until one already seen. */
async function fetchEvents(id) {
  let after = null;
  const fresh = [];
  try {
    for (let pages = 0; pages < 100; pages++) {
    const q = `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?limit=1000` + (after ? `&after=${encodeURIComponent(after)}` : '');
      const page = await api(q, { admin: true });
      let seen = false;
      for (const e of page.data) {
        if (events.has(e.id)) { seen = true; continue; }
        events.set(e.id, e);
        fresh.push(e);
      }
      if (seen || !page.has_more || !page.data.length) return;
      after = page.data[page.data.length - 1].id;
    }
  } finally {
    if (id === job) ordered = fresh.concat(ordered);
  }
}

let lastCheckpoints = '';

async function refreshJob() {
  const id = job;
  const j = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`, { admin: true });
  await fetchEvents(id);
  if (id !== job) return;
  const st = $('job-status');
  st.className = 'pill ' + j.status;
  st.textContent = j.status;
  $('job-progress').textContent = progress(j);
  const live = ['validating_files', 'queued', 'running'].includes(j.status);
  $('job-pause').disabled = !(live && j.status !== 'validating_files');
  $('job-resume').disabled = j.status !== 'paused';
  $('job-cancel').disabled = !(live || j.status === 'paused');
  $('job-eta').textContent = j.status === 'running' && j.estimated_finish ? `ETA ${fmtDuration(j.estimated_finish - Date.now() / 1000)}` : '';
  $('job-error').textContent = j.error && j.error.message ? j.error.message : '';

  const metrics = new Map();
  for (const e of ordered) if (e.type === 'metrics' && e.data && typeof e.data.step === 'number') metrics.set(e.data.step, e.data);
  const rows = [...metrics.values()].sort((a, b) => a.step - b.step);
  const series = (k) => rows.filter((r) => typeof r[k] === 'number').map((r) => [r.step, r[k]]);
  // Each metrics event repeats the latest validation figures: a point where a new one appears.
  const evaluated = (k) => series(k).filter(([, v], i, all) => i === 0 || v !== all[i - 1][1]);
  lineChart($('loss-chart'), [{ name: 'train', points: series('train_loss') }, { name: 'validation', points: evaluated('valid_loss') }]);
  lineChart($('accuracy-chart'), [{ name: 'train', points: series('train_mean_token_accuracy') },
                                  { name: 'validation', points: evaluated('valid_mean_token_accuracy') }], { yMin: 0 });
  lineChart($('lr-chart'), [{ name: 'learning rate', points: series('learning_rate') }], { yMin: 0 });
  lineChart($('tps-chart'), [{ name: 'tokens/s', points: series('tokens_per_second') }], { yMin: 0 });
  const last = rows[rows.length - 1];
  $('job-speed').textContent = last && last.tokens_per_second ? `${last.tokens_per_second.toFixed(0)} tokens/s` : '';

  const log = clear($('job-events'));
  for (const e of ordered.slice(0, 500)) {
    log.append(el('li', { class: 'level-' + e.level, text: `${fmtTime(e.created_at)}  ${e.message}` }));
  }

  const ck = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/checkpoints?limit=100`, { admin: true });
  const items = ck.data.slice().sort((a, b) => a.step_number - b.step_number);
  const key = items.map((c) => c.id).join() + '|' + (j.fine_tuned_model || '');
  if (key !== lastCheckpoints) {
    lastCheckpoints = key;
    modelsChanged();
    const list = clear($('job-checkpoints'));
    for (const c of items) {
      const loss = c.metrics && typeof c.metrics.train_loss === 'number' ? ` · train loss ${c.metrics.train_loss.toFixed(4)}` : '';
      const open = el('button', { type: 'button', 'data-testid': 'open-checkpoint', dataset: { model: c.fine_tuned_model_checkpoint },
                                 text: 'Open in Chat' });
      open.addEventListener('click', () => openWithModel(c.fine_tuned_model_checkpoint));
      list.append(el('li', {}, `step ${c.step_number}${loss} `, open, el('code', { text: ' ' + c.fine_tuned_model_checkpoint })));
    }
    if (j.fine_tuned_model) {
      const open = el('button', { type: 'button', 'data-testid': 'open-model', dataset: { model: j.fine_tuned_model }, text: 'Open in Chat' });
      open.addEventListener('click', () => openWithModel(j.fine_tuned_model));
      list.append(el('li', {}, 'final model ', open, el('code', { text: ' ' + j.fine_tuned_model })));
    }
  }
}

async function act(verb) {
  try { await api(`/v1/fine_tuning/jobs/${encodeURIComponent(job)}/${verb}`, { method: 'POST', admin: true }); }
  catch (e) { $('job-error').textContent = e.message; }
  tick();
}

/** One poll of what is on screen (never two at once); the next follows in 1.5 s while shown. */
let ticking = false, again = false;
async function tick() {
  clearTimeout(timer);
  if (!visible) return;
  if (ticking) { again = true; return; }
  ticking = true;
  try {
    if (job) await refreshJob(); else await Promise.all([refreshJobs(), refreshFiles()]);
  } catch { /* shown by the banner; try again */ } finally { ticking = false; }
  if (again) { again = false; return tick(); }
  if (visible) timer = setTimeout(tick, 1500);
}

export function show() { visible = true; tick(); }
export function hide() { visible = false; clearTimeout(timer); }

export function init() {
  const zone = $('drop-zone');
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  $('job-upload').addEventListener('change', (e) => upload(e.target.files[0]));
  $('job-form').addEventListener('submit', createJob);
  $('job-back').addEventListener('click', closeJob);
  $('job-pause').addEventListener('click', () => act('pause'));
  $('job-resume').addEventListener('click', () => act('resume'));
  $('job-cancel').addEventListener('click', () => act('cancel'));
}
