// Compare: one prompt sent to two models at once (say the base and a fine-tune), answers side by side.

import { $, el, clear } from './dom.js';
import { renderMarkdown, splitThink } from './markdown.js';
import { fillModelSelect, streamChat } from './chat.js';

let controller = null;

export function setModels(list) {
  fillModelSelect($('compare-model-a'), list);
  const b = $('compare-model-b');
  const before = b.value;
  fillModelSelect(b, list);
  // By default the right side shows something other than the left: the newest adapter or fine-tune.
  if (!before && list.length > 1) b.value = list[list.length - 1].id;
}

async function run(side, model, messages, signal) {
  const out = clear($('compare-output-' + side));
  const stats = $('compare-stats-' + side);
  $('compare-title-' + side).textContent = model;
  stats.textContent = '';
  out.classList.remove('error');
  out.dataset.raw = '';
  const body = { model, messages, stream: true, stream_options: { include_usage: true } };
  const t = Number($('compare-temperature').value), n = Number($('compare-max-tokens').value);
  if ($('compare-temperature').value !== '' && !isNaN(t)) body.temperature = t;
  if ($('compare-max-tokens').value !== '' && !isNaN(n)) body.max_tokens = n;
  try {
    const done = await streamChat(body, (content, reasoning) => {
      const [inline, answer] = splitThink(content);
      clear(out);
      if (reasoning || inline) {
        out.append(el('details', { class: 'reasoning' }, el('summary', { text: 'Reasoning' }), el('div', { text: reasoning || inline })));
      }
      out.append(renderMarkdown(reasoning ? content : answer));
      out.dataset.raw = content;
    }, signal);
    const toks = done.usage ? done.usage.completion_tokens : 0;
    stats.textContent = `${toks} tokens · ${done.seconds.toFixed(1)} s · ${(toks / done.seconds).toFixed(1)} tok/s · ${done.finish}`;
  } catch (e) {
    if (e.name === 'AbortError') stats.textContent = 'stopped';
    else { out.classList.add('error'); out.textContent = e.message; }
  }
}

async function send() {
  const text = $('compare-input').value.trim();
  if (!text || controller) return;
  const messages = [];
  const system = $('compare-system').value.trim();
  if (system) messages.push({ role: 'system', content: system });
  messages.push({ role: 'user', content: text });
  controller = new AbortController();
  $('compare-send').disabled = true;
  $('compare-stop').disabled = false;
  try {
    await Promise.all([run('a', $('compare-model-a').value, messages, controller.signal),
                       run('b', $('compare-model-b').value, messages, controller.signal)]);
  } finally {
    controller = null;
    $('compare-send').disabled = false;
    $('compare-stop').disabled = true;
  }
}

export function init() {
  $('compare-send').addEventListener('click', send);
  $('compare-stop').addEventListener('click', () => controller && controller.abort());
}
