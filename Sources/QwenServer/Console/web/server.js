// Server: live charts from /metrics (running and waiting requests, output tokens/s, KV cache
// use, the share of engine time fine-tuning takes) and what the CPU runs (from /v1/models).

import { $, el, clear } from './dom.js';
import { text } from './api.js';
import { lineChart } from './charts.js';

const samples = []; // {t, m: Map(name -> value)}
const KEEP = 150;   // five minutes at one sample per two seconds
let timer = null;

/** The unlabelled samples of a Prometheus text exposition. */
export function parseMetrics(body) {
  const m = new Map();
  for (const line of body.split('\n')) {
    const hit = line.match(/^([a-zA-Z_:][\w:]*) (\S+)$/);
    if (hit) m.set(hit[1], Number(hit[2]));
  }
  return m;
}

export function setModels(list) {
  const base = list.find((m) => m.parent === null || m.parent === undefined);
  const info = clear($('server-info'));
  if (!base) return;
  const facts = [['Model', base.id], ['Context', base.max_model_len], ['Compute', base.compute], ['CPU level', base.cpu_level],
                 ['int8 kernels', base.int8_kernel], ['f32 kernels', base.f32_kernel], ['Adapters', list.length - 1]];
  for (const [k, v] of facts) if (v !== undefined && v !== null) info.append(el('span', { dataset: { fact: k } }, el('b', { text: k + ': ' }), String(v)));
}

function rate(name, a, b) {
  const d = (b.m.get(name) ?? 0) - (a.m.get(name) ?? 0);
  return Math.max(0, d / ((b.t - a.t) / 1000));
}

function draw() {
  const t0 = samples.length ? samples[0].t : 0;
  const x = (s) => Math.round((s.t - t0) / 1000);
  const label = (v) => `${Math.round(v)}s`;
  const g = (name) => samples.map((s) => [x(s), s.m.get(name) ?? 0]);
  lineChart($('server-requests'), [{ name: 'running', points: g('qwen_running_sequences') }, { name: 'waiting', points: g('qwen_waiting_requests') }],
            { yMin: 0, yMax: 1, xLabel: label, dots: false });
  const pairs = samples.slice(1).map((s, i) => [samples[i], s]);
  lineChart($('server-tps'), [{ name: 'tokens/s', points: pairs.map(([a, b]) => [x(b), rate('qwen_generation_tokens_total', a, b)]) }],
            { yMin: 0, yMax: 1, xLabel: label, dots: false });
  const pct = (name) => samples.map((s) => [x(s), 100 * (s.m.get(name) ?? 0) / Math.max(1, s.m.get('qwen_kv_blocks_total') ?? 1)]);
  lineChart($('server-kv'), [{ name: 'held', points: pct('qwen_kv_blocks_used') }, { name: 'cached', points: pct('qwen_kv_blocks_cached') }],
            { yMin: 0, yMax: 1, xLabel: label, dots: false });
  lineChart($('server-train'), [{ name: 'training', points: pairs.map(([a, b]) => [x(b), Math.min(100, 100 * rate('qwen_training_seconds_total', a, b))]) }],
            { yMin: 0, yMax: 100, xLabel: label, dots: false });
}

async function tick() {
  try {
    samples.push({ t: Date.now(), m: parseMetrics(await text('/metrics')) });
    if (samples.length > KEEP) samples.shift();
    draw();
  } catch { /* the next sample may work */ }
}

export function show() { if (!timer) { tick(); timer = setInterval(tick, 2000); } }
export function hide() { clearInterval(timer); timer = null; }
export function init() {}
