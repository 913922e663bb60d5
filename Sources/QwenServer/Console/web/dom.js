// DOM helpers. Text is only ever inserted as text nodes: nothing from the model, a file or
// the server is parsed as HTML anywhere in the console.

export const $ = (id) => document.getElementById(id);

/** `el('td', {class: 'x', dataset: {step: 3}}, 'text', child)`; strings become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export function clear(node) { node.replaceChildren(); return node; }

/** Shows a status line (error or not) under a form. */
export function status(node, text, kind = '') {
  node.className = 'status' + (kind ? ' ' + kind : '');
  node.textContent = text;
}

export function fmtTime(unix) {
  if (!unix) return '';
  return new Date(unix * 1000).toLocaleString();
}

export function fmtDuration(seconds) {
  if (!isFinite(seconds) || seconds < 0) return '';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/** A tooltip that follows the pointer; its text is set as text. */
export function tooltip(target, textFn) {
  const tip = $('tooltip');
  target.addEventListener('mousemove', (e) => {
    tip.textContent = textFn();
    tip.hidden = false;
    tip.style.left = Math.min(e.clientX + 12, window.innerWidth - tip.offsetWidth - 8) + 'px';
    tip.style.top = (e.clientY + 14) + 'px';
  });
  target.addEventListener('mouseleave', () => { tip.hidden = true; });
}
