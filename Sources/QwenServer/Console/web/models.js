// Models and adapters: what is served; load an adapter by path, unload it, delete a fine-tune (admin).

import { $, el, clear, status } from './dom.js';
import { api, kindOf } from './api.js';
import { openWithModel } from './chat.js';

const modelsChanged = () => document.dispatchEvent(new Event('models-changed'));

async function remove(m) {
  const kind = kindOf(m);
  const path = kind === 'adapter' ? `/v1/adapters/${encodeURIComponent(m.id)}` : `/v1/models/${encodeURIComponent(m.id)}`;
  if (!confirm(kind === 'adapter' ? `Unload adapter ${m.id}?` : `Delete fine-tuned model ${m.id}? This cannot be undone.`)) return;
  try {
    await api(path, { method: 'DELETE', admin: true });
    status($('models-status'), `${kind === 'adapter' ? 'Unloaded' : 'Deleted'} ${m.id}`, 'ok');
  } catch (e) {
    status($('models-status'), `${m.id}: ${e.message}`, 'error');
  }
  modelsChanged();
}

export function setModels(list) {
  const table = clear($('models-table'));
  for (const m of list) {
    const kind = kindOf(m);
    const actions = el('td');
    const chat = el('button', { type: 'button', text: 'Chat' });
    chat.addEventListener('click', () => openWithModel(m.id));
    actions.append(chat);
    if (kind === 'adapter' || kind === 'fine-tune') {
      const b = el('button', { type: 'button', 'data-testid': 'model-remove', dataset: { model: m.id },
                               text: kind === 'adapter' ? 'Unload' : 'Delete' });
      b.addEventListener('click', () => remove(m));
      actions.append(' ', b);
    }
    table.append(el('tr', { dataset: { model: m.id } }, el('td', { text: m.id }), el('td', { text: kind }),
                    el('td', { text: m.parent || '' }), el('td', { text: m.max_model_len ?? '' }), actions));
  }
}

async function load(e) {
  e.preventDefault();
  const name = $('adapter-name').value.trim(), path = $('adapter-path').value.trim();
  try {
    await api('/v1/adapters', { method: 'POST', body: { name, path }, admin: true });
    status($('models-status'), `Loaded ${name}`, 'ok');
    $('adapter-form').reset();
  } catch (err) {
    status($('models-status'), `${name}: ${err.message}`, 'error');
  }
  modelsChanged();
}

export function init() {
  $('adapter-form').addEventListener('submit', load);
}
