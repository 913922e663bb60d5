// A small Markdown renderer that builds DOM nodes: fenced code, headings, lists, quotes,
// paragraphs, and inline code / bold / italics. Every piece of text becomes a text node, so a
// model answer holding HTML shows that HTML as text. Links are shown as text, never followed.

import { el } from './dom.js';

/**
 * A `<think>…</think>` block the server left in the answer (a model trained to reason whose chat
 * template does not separate it), split off so it can be shown folded: [reasoning, answer].
 * While the block is still open, all of it is reasoning.
 */
export function splitThink(text) {
  const m = text.match(/^\s*<think>\n?([\s\S]*?)(?:<\/think>\s*|$)([\s\S]*)$/);
  return m ? [m[1], m[2]] : ['', text];
}

export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.split('\n');
  let i = 0;
  let para = [];
  const flush = () => {
    if (para.length) out.append(el('p', {}, ...inline(para.join('\n'))));
    para = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(```|~~~)\s*([\w+.#-]*)\s*$/);
    if (fence) {
      flush();
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i++; // the closing fence (or the end of an unfinished block while streaming)
      const code = el('code', { text: body.join('\n') });
      if (fence[2]) code.dataset.lang = fence[2];
      out.append(el('pre', {}, code));
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      flush();
      out.append(el('h' + Math.min(6, heading[1].length + 2), {}, ...inline(heading[2])));
      i++;
      continue;
    }
    const item = line.match(/^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/);
    if (item) {
      flush();
      const ordered = /\d/.test(item[1]);
      const list = el(ordered ? 'ol' : 'ul');
      while (i < lines.length) {
        const m = lines[i].match(/^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/);
        if (!m || /\d/.test(m[1]) !== ordered) break;
        list.append(el('li', {}, ...inline(m[2])));
        i++;
      }
      out.append(list);
      continue;
    }
    if (line.startsWith('>')) {
      flush();
      const quote = [];
      while (i < lines.length && lines[i].startsWith('>')) quote.push(lines[i++].replace(/^>\s?/, ''));
      out.append(el('blockquote', {}, ...inline(quote.join('\n'))));
      continue;
    }
    if (!line.trim()) { flush(); i++; continue; }
    para.push(line);
    i++;
  }
  flush();
  return out;
}

/** Inline code, **bold** and *italics*, as nodes. */
function inline(text) {
  const nodes = [];
  const re = /`([^`\n]+)`|\*\*([^*\n]+)\*\*|__([^_\n]+)__|\*([^*\n]+)\*/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    if (m.index > last) nodes.push(text.slice(last, m.index));
    if (m[1] !== undefined) nodes.push(el('code', { text: m[1] }));
    else if (m[2] !== undefined || m[3] !== undefined) nodes.push(el('strong', { text: m[2] ?? m[3] }));
    else nodes.push(el('em', { text: m[4] }));
    last = re.lastIndex;
  }
  if (last < text.length) nodes.push(text.slice(last));
  return nodes;
}
