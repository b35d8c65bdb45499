// fleet.js draws the fleet page's rows (fleet.html) from the data inline in the page, then from
// GET fleet.json every few seconds. No library: the boot server serves everything it needs.
'use strict';
(function () {
  const REFRESH_MS = 5000;
  const NICE = [10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400]; // axis lengths, s
  const $ = (id) => document.getElementById(id);
  const rows = $('rows'), filter = $('filter'), failOnly = $('failonly'), note = $('note'), detail = $('detail'), axis = $('axis');
  let data = JSON.parse($('fleet-data').textContent);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function dur(ms) {
    const s = ms / 1000;
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm' + String(Math.round(s % 60)).padStart(2, '0') + 's';
    return Math.floor(s / 3600) + 'h' + String(Math.floor(s % 3600 / 60)).padStart(2, '0') + 'm';
  }

  // end is a bar's end, ms after its boot began; a running one ends now.
  const end = (b, m) => (b.b >= 0 ? b.b : Math.max(data.now - m.t0, b.a));

  // axisLength fits 95% of the boots (a machine stuck for days does not squash the others).
  function axisLength(ms) {
    const spans = ms.filter((m) => m.t0).map((m) => m.bars.reduce((x, b) => Math.max(x, end(b, m)), 0));
    spans.sort((a, b) => a - b);
    const p95 = spans.length ? spans[Math.floor(0.95 * (spans.length - 1))] : 0;
    return 1000 * (NICE.find((n) => n * 1000 >= p95) || NICE[NICE.length - 1]);
  }

  function label(m, b) {
    let s = (m.node || m.mac) + ' ' + b.p + (b.n ? ' attempt ' + b.n : '') + ': ' + (b.s === 'start' ? 'running' : b.s);
    s += ', ' + dur(end(b, m) - b.a) + ' from +' + dur(b.a);
    return b.e ? s + ': ' + b.e : s;
  }

  function row(m, full) {
    const tr = el('tr', m.state.replace(' ', '-'));
    tr.dataset.mac = m.mac;
    const name = el('td', 'name');
    const link = el('a', null, m.node || m.mac);
    link.href = 'machine/' + m.mac;
    name.append(link);
    const track = el('div', 'track');
    const alt = [0, 0, 0], prev = ['', '', ''];
    let failed = 0;
    for (const b of m.bars) {
      const lane = b.l || 0;
      if (b.p !== prev[lane]) { alt[lane] ^= 1; prev[lane] = b.p; }
      const s = el('span', 'bar ' + b.s + ' l' + lane + (alt[lane] ? '' : ' alt'));
      const a = Math.min(b.a, full), z = Math.min(end(b, m), full);
      s.style.cssText = 'left:' + (a / full * 100) + '%;width:' + ((z - a) / full * 100) + '%';
      s.dataset.phase = b.p;
      if (b.n) s.dataset.attempt = b.n;
      s.title = label(m, b);
      if (b.s === 'error') failed++;
      track.append(s);
    }
    track.setAttribute('role', 'img');
    track.setAttribute('aria-label', m.bars.length + ' phase attempts, ' + failed + ' failed');
    const mark = { failing: '✗ ', recovered: '! ' }[m.state] || '';
    const reason = el('td', 'reason error-text', m.reason || '');
    if (m.reason) reason.title = m.reason;
    const bars = el('td', 'bars');
    bars.append(track);
    tr.append(name, el('td', 'mac', m.mac), el('td', 'profile', (m.profile || '') + (m.unlisted ? ' (unlisted)' : '')),
      el('td', 'state', mark + m.state), el('td', 'last', m.last || ''), el('td', 'num', m.failures ? String(m.failures) : ''),
      bars, reason);
    tr.dataset.text = [m.node, m.mac, m.profile, m.state, m.last, m.reason].join(' ').toLowerCase();
    return tr;
  }

  function drawAxis(full) {
    axis.replaceChildren();
    for (let i = 0; i <= 4; i++) {
      const t = el('span', 'tick', (i ? '+' : '') + dur(full * i / 4));
      t.style.left = (i * 25) + '%';
      axis.append(t);
    }
  }

  function applyFilter() {
    const q = filter.value.trim().toLowerCase(), only = failOnly.checked;
    let shown = 0;
    for (const tr of rows.rows) {
      const ok = (!q || tr.dataset.text.includes(q)) && (!only || tr.className === 'failing' || tr.className === 'recovered');
      tr.hidden = !ok;
      if (ok) shown++;
    }
    $('shown').textContent = shown === rows.rows.length ? '' : 'showing ' + shown;
  }

  function render() {
    const t = performance.now();
    const full = axisLength(data.machines);
    drawAxis(full);
    const frag = document.createDocumentFragment();
    for (const m of data.machines) frag.append(row(m, full));
    rows.replaceChildren(frag);
    const failing = data.machines.filter((m) => m.state === 'failing').length;
    $('summary').textContent = data.machines.length + ' machines, ' + failing + ' failing';
    applyFilter();
    void rows.offsetHeight; // lay the rows out: the figure counts it
    rows.dataset.renderMs = Math.round(performance.now() - t); // the README's figure
  }

  async function refresh() {
    if (!document.hidden) {
      try {
        const r = await fetch('fleet.json', { cache: 'no-store' });
        if (!r.ok) throw new Error('HTTP ' + r.status);
        data = await r.json();
        render();
        note.textContent = 'updated ' + new Date().toLocaleTimeString();
        note.className = '';
      } catch (e) {
        note.textContent = 'refresh failed (' + e.message + '), retrying';
        note.className = 'error-text';
      }
    }
    setTimeout(refresh, REFRESH_MS);
  }

  filter.addEventListener('input', applyFilter);
  failOnly.addEventListener('change', applyFilter);
  rows.addEventListener('click', (e) => { if (e.target.classList.contains('bar')) detail.textContent = e.target.title; });
  render();
  setTimeout(refresh, REFRESH_MS);
})();
