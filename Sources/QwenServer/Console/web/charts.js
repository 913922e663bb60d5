// Line charts drawn as SVG. Each plotted point is a <circle> carrying its x value as
// data-step (and data-value), so tests and users can read exactly what is drawn.

const NS = 'http://www.w3.org/2000/svg';
const W = 480, H = 220, L = 46, R = 10, T = 10, B = 24;

function svgEl(tag, attrs) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  return n;
}

function fmt(v) {
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (a >= 1000) return v.toFixed(0);
  if (a < 0.001) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}

/**
 * Draws `series` = [{points: [[x, y], …]}, …] (classes s0, s1 in order) into `svg`.
 * `opts.yMin` pins the bottom of the axis (e.g. 0 for rates).
 */
export function lineChart(svg, series, opts = {}) {
  svg.replaceChildren();
  const all = series.flatMap((s) => s.points).filter(([x, y]) => isFinite(x) && isFinite(y));
  svg.append(svgEl('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(svgEl('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  if (!all.length) {
    const t = svgEl('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' });
    t.textContent = opts.empty || 'no data yet';
    svg.append(t);
    return;
  }
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  let y0 = opts.yMin ?? Math.min(...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
  if (opts.yMax !== undefined) y1 = Math.max(y1, opts.yMax);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const px = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  for (const [v, anchor] of [[y0, H - B], [(y0 + y1) / 2, (H - B + T) / 2], [y1, T + 8]]) {
    const t = svgEl('text', { x: L - 4, y: anchor, 'text-anchor': 'end' });
    t.textContent = fmt(v);
    svg.append(t);
  }
  for (const [v, anchor, align] of [[x0, L, 'start'], [x1, W - R, 'end']]) {
    const t = svgEl('text', { x: anchor, y: H - 6, 'text-anchor': align });
    t.textContent = opts.xLabel ? opts.xLabel(v) : fmt(v);
    svg.append(t);
  }
  series.forEach((s, i) => {
    const pts = s.points.filter(([x, y]) => isFinite(x) && isFinite(y));
    if (!pts.length) return;
    svg.append(svgEl('polyline', { class: 's' + i, points: pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ') }));
    if (opts.dots === false) return;
    for (const [x, y] of pts) {
      const c = svgEl('circle', { class: 's' + i, cx: px(x).toFixed(1), cy: py(y).toFixed(1), r: pts.length > 80 ? 1.2 : 2.2,
                                  'data-step': x, 'data-value': y, 'data-series': s.name || String(i) });
      const title = svgEl('title', {});
      title.textContent = `${s.name || ''} step ${x}: ${fmt(y)}`;
      c.append(title);
      svg.append(c);
    }
  });
}
