// The console's shell: tabs, keys, the models every page shows, and the error banner.

import { $ } from './dom.js';
import { keys, models, onError } from './api.js';
import * as chat from './chat.js';
import * as compare from './compare.js';
import * as tuning from './tuning.js';
import * as modelsPage from './models.js';
import * as server from './server.js';

const pages = { chat, compare, tuning, models: modelsPage, server };

function banner(text) {
  const b = $('banner');
  b.textContent = text;
  b.hidden = !text;
}

onError((e) => {
  if (e.status === 401) banner('The server asks for a key: enter your API key above (admin actions need the admin key).');
  else if (e.status === 403) banner('This key may not do that: admin actions need the admin key.');
});

async function refreshModels() {
  try {
    const list = await models();
    for (const p of Object.values(pages)) p.setModels && p.setModels(list);
    banner('');
  } catch (e) {
    if (e.status !== 401 && e.status !== 403) banner(`Cannot reach the server: ${e.message}`);
  }
}

function route() {
  const name = (location.hash || '#chat').slice(1);
  const tab = pages[name] ? name : 'chat';
  for (const [n, p] of Object.entries(pages)) {
    const on = n === tab;
    $('page-' + n).hidden = !on;
    document.querySelector(`[data-tab="${n}"]`).classList.toggle('active', on);
    if (on) p.show && p.show(); else p.hide && p.hide();
  }
}

function init() {
  const api = $('api-key'), admin = $('admin-key');
  $('keys').addEventListener('submit', (e) => e.preventDefault());
  api.value = keys.api;
  admin.value = keys.admin;
  api.addEventListener('change', () => { keys.api = api.value.trim(); refreshModels(); });
  admin.addEventListener('change', () => { keys.admin = admin.value.trim(); refreshModels(); });
  for (const p of Object.values(pages)) p.init();
  document.addEventListener('models-changed', refreshModels);
  window.addEventListener('hashchange', route);
  setInterval(refreshModels, 10000);
  refreshModels();
  route();
}

init();
