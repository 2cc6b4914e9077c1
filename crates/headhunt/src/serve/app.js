// headhunt serve: the little the pages do in the browser. Data comes from the page
// (#data) and from the server's JSON endpoints; nothing is fetched from elsewhere.
'use strict';

const DATA = JSON.parse(document.getElementById('data').textContent);
const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, text) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
const q = (params) => new URLSearchParams(params).toString();
async function getJSON(url) {
  const r = await fetch(url, { credentials: 'same-origin' });
  if (!r.ok) throw new Error(await r.text());
  return r.json();
}

// Viridis, in five stops, interpolated.
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function viridis(t) {
  t = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i;
  const c = STOPS[i].map((a, k) => Math.round(a + (STOPS[i + 1][k] - a) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

// A layers x heads map of values; `onClick(layer, head)`; `selected` a Set of "L-H".
function headMap(box, nLayers, nHeads, values, onClick, selected) {
  const hi = Math.max(0.1, ...values);
  const table = el('table', { class: 'headmap' });
  const top = el('tr');
  top.append(el('th', {}, ''));
  for (let h = 0; h < nHeads; h++) top.append(el('th', {}, String(h)));
  table.append(top);
  for (let l = 0; l < nLayers; l++) {
    const tr = el('tr');
    tr.append(el('th', {}, String(l)));
    for (let h = 0; h < nHeads; h++) {
      const v = values[l * nHeads + h];
      const td = el('td', { class: 'cell', 'data-head': `${l}-${h}`, title: `head ${l}-${h}: ${v.toFixed(3)}` });
      td.style.background = viridis(v / hi);
      if (selected && selected.has(`${l}-${h}`)) td.classList.add('chosen');
      td.addEventListener('click', () => onClick(l, h, td));
      tr.append(td);
    }
    table.append(tr);
  }
  box.replaceChildren(table);
}

// The runs page: statuses refreshed from the folders.
async function runsPage() {
  const refresh = async () => {
    try {
      for (const r of await getJSON('/api/runs')) {
        const row = document.querySelector(`tr[data-run="${CSS.escape(r.path)}"]`);
        if (!row) continue;
        row.querySelector('.progress').textContent = `${r.trials_done} / ${r.trials_planned ?? '?'}`;
        const s = row.querySelector('.status');
        s.textContent = r.status;
        s.className = `status ${r.status}`;
      }
    } catch (e) { /* the next refresh tries again */ }
  };
  setInterval(refresh, 5000);
}

// A run page: the head map, and per head its scores across trials.
function runPage() {
  if (!DATA.means) return;
  const { n_layers: L, n_heads: H, means, per_trial: perTrial, threshold, ablations } = DATA;
  headMap($('#headmap'), L, H, means, (l, h) => {
    const i = l * H + h, scores = perTrial[i] || [];
    const active = scores.filter((s) => s > threshold).length;
    const bins = new Array(10).fill(0);
    for (const s of scores) bins[Math.min(9, Math.floor(s * 10))]++;
    const most = Math.max(1, ...bins);
    const box = $('#head-detail');
    box.replaceChildren(el('h3', {}, `head ${l}-${h}`),
      el('p', {}, `mean score ${means[i].toFixed(3)} over ${scores.length} trials; above ${threshold} in ` +
        `${active} (activation frequency ${(scores.length ? active / scores.length : 0).toFixed(2)})`));
    const hist = el('div', { class: 'hist' });
    bins.forEach((b, k) => {
      const bar = el('div', { class: 'bar', title: `${(k / 10).toFixed(1)}-${((k + 1) / 10).toFixed(1)}: ${b} trials` });
      bar.style.height = `${Math.round(60 * b / most)}px`;
      hist.append(bar);
    });
    box.append(el('p', { class: 'note' }, 'its score in each trial, 0 to 1 in tenths:'), hist);
    for (const a of ablations || []) {
      const rank = [...means.keys()].sort((x, y) => means[y] - means[x]).indexOf(i) + 1;
      const rows = (a.sweep || []).map((s) => `K=${s.k}: top ${s.top.toFixed(1)}, random ${s.random_mean.toFixed(1)}` +
        (rank <= s.k && s.k > 0 ? ' (masked)' : ''));
      box.append(el('p', {}, `Masking effect, ${a.run} (this head is rank ${rank}): ${rows.join('; ')}`));
    }
  });
}

// A trial page.
async function trialPage() {
  const base = { run: DATA.run, trial: DATA.trial };
  let t;
  try {
    t = await getJSON(`/api/trial?${q(base)}`);
  } catch (e) {
    $('#summary').textContent = `This trial cannot be shown: ${e.message}`;
    return;
  }
  const H = t.n_heads;
  const label = (i) => `${Math.floor(i / H)}-${i % H}`;
  const means = t.mean_scores || t.trial_scores;
  const fmt = (v) => (v === null || v === undefined ? '-' : Number(v).toFixed(3));
  $('#summary').replaceChildren(
    el('div', {}, `${t.prompt.length} prompt tokens, needle at depth ${t.depth}% (tokens ${t.needle_span[0]}-${t.needle_span[1]})`),
    el('div', {}, `Question: ${t.needle.question}`),
    el('div', {}, `Needle: ${t.needle.needle}`),
    el('div', {}, `Answer: ${t.answer} (ROUGE-1 ${t.rouge1.toFixed(1)}, retrieval-head support ${fmt(t.support)})`),
    t.masked && t.masked.length ? el('div', {}, `Run with masked: ${t.masked.join(', ')}`) : el('span'));

  // The prompt, token by token (one span each; long prompts scroll).
  const prompt = $('#prompt');
  const frag = document.createDocumentFragment();
  const spans = t.pieces.map((p, i) => {
    const s = el('span', { class: 'p', 'data-i': String(i) }, p);
    if (i >= t.needle_span[0] && i < t.needle_span[1]) s.classList.add('needle');
    if (i >= t.answer_span[0] && i < t.answer_span[1]) s.classList.add('answer-span');
    frag.append(s);
    return s;
  });
  prompt.append(frag);

  // The answer's tokens; a click lists the heads that copied it.
  let step = 0, head = null;
  const answer = $('#answer');
  t.answer_pieces.forEach((p, i) => {
    const b = el('button', { type: 'button', class: 'tok', 'data-step': String(i) }, p);
    b.addEventListener('click', () => chooseStep(i));
    answer.append(b);
  });
  function chooseStep(i) {
    step = i;
    answer.querySelectorAll('.tok').forEach((b) => b.classList.toggle('on', Number(b.dataset.step) === i));
    const heads = [...t.copying[i]].sort((a, b) => means[b] - means[a]);
    const box = $('#copying');
    box.replaceChildren(el('div', {}, `Step ${i}, token «${t.answer_pieces[i]}»: ${heads.length} heads copied it from the prompt` +
      (heads.length ? ' (by retrieval score):' : '.')));
    const list = el('div', { class: 'heads' });
    for (const h of heads) {
      const b = el('button', { type: 'button', class: 'head', 'data-head': label(h) }, `${label(h)} (${fmt(means[h])})`);
      b.addEventListener('click', () => showHead(label(h)));
      list.append(b);
    }
    box.append(list);
    if (head) showHead(head);
  }

  // A head's attention at the chosen step: the prompt's tokens tinted, a strip end to end.
  let tinted = [];
  async function showHead(h) {
    head = h;
    const canvas = $('#strip');
    canvas.removeAttribute('data-ready');
    $('#strip-label').textContent = `head ${h}, step ${step}: computing (queued behind any running job)...`;
    let a;
    try {
      a = await getJSON(`/api/attention?${q({ ...base, head: h, step })}`);
    } catch (e) {
      $('#strip-label').textContent = `head ${h}: ${e.message}`;
      return;
    }
    if (a.head !== head || a.step !== step) return;
    for (const i of tinted) spans[i].style.background = '';
    tinted = [];
    const n = spans.length, hi = Math.max(1e-9, ...a.probs.slice(0, n));
    for (let i = 0; i < n; i++) {
      const p = a.probs[i] / hi;
      if (p > 0.02) { spans[i].style.background = `rgba(230, 80, 0, ${Math.min(1, p).toFixed(3)})`; tinted.push(i); }
    }
    const w = canvas.width = Math.max(300, canvas.clientWidth);
    const ctx = canvas.getContext('2d');
    ctx.clearRect(0, 0, w, canvas.height);
    const col = new Float32Array(w);
    for (let i = 0; i < n; i++) { const x = Math.floor(i * w / n); col[x] = Math.max(col[x], a.probs[i] / hi); }
    for (let x = 0; x < w; x++) { ctx.fillStyle = viridis(col[x]); ctx.fillRect(x, 0, 1, 36); }
    ctx.fillStyle = '#c00';
    const [l, hh] = h.split('-').map(Number), flat = l * H + hh;
    t.argmax.forEach((row) => { const x = Math.floor(row[flat] * w / n); ctx.fillRect(x, 40, 2, 14); });
    ctx.fillStyle = '#fc0';
    ctx.fillRect(Math.floor(t.needle_span[0] * w / n), 36, Math.max(2, Math.floor((t.needle_span[1] - t.needle_span[0]) * w / n)), 4);
    const at = a.argmax;
    $('#strip-label').textContent = `head ${h}, step ${step}: argmax at position ${at} («${t.pieces[at] ?? 'answer'}», ` +
      `weight ${a.probs[at].toFixed(3)}); the record says ${t.argmax[step][flat]}`;
    canvas.dataset.ready = `${h}:${step}`;
    canvas.dataset.argmax = String(at);
    if (spans[at]) spans[at].scrollIntoView({ block: 'nearest' });
  }

  $('#show-head-go').addEventListener('click', () => showHead($('#show-head').value.trim()));

  // Choosing heads and rerunning the trial with them masked.
  const chosen = new Set();
  const drawMap = () => headMap($('#headmap'), t.n_layers, H, means, (l, h, td) => {
    const k = `${l}-${h}`;
    if (chosen.has(k)) chosen.delete(k); else chosen.add(k);
    td.classList.toggle('chosen', chosen.has(k));
    $('#mask-heads').value = [...chosen].join(',');
  }, chosen);
  drawMap();
  $('#original-answer').textContent = t.answer;
  $('#original-rouge').textContent = t.rouge1.toFixed(1);
  $('#original-support').textContent = fmt(t.support);
  const mode = () => ({ mode: $('#mask-mode').value, phase: $('#mask-phase').value });
  const k = () => Number($('#mask-k').value);
  $('#mask-chosen').addEventListener('click', () => intervene({ heads: $('#mask-heads').value }));
  $('#mask-top').addEventListener('click', () => intervene({ top: k() }));
  $('#mask-random').addEventListener('click', () => intervene({ random: k(), seed: 0 }));
  async function intervene(which) {
    const state = $('#rerun-state');
    for (const id of ['#rerun-answer', '#rerun-rouge', '#rerun-support']) $(id).textContent = '';
    $('#rerun-answer').removeAttribute('data-done');
    const r = await fetch('/api/intervene', {
      method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ ...base, ...which, ...mode() }),
    });
    if (!r.ok) { state.textContent = await r.text(); return; }
    const { job } = await r.json();
    for (;;) {
      const s = await getJSON(`/api/job?${q({ id: job })}`);
      state.textContent = s.state === 'queued' ? `queued: place ${s.place} in line` :
        `${s.state}: masking ${s.heads.join(', ')}`;
      $('#rerun-answer').textContent = s.result ? s.result.answer : s.text;
      if (s.state === 'done') {
        $('#rerun-rouge').textContent = s.result.rouge1.toFixed(1);
        $('#rerun-support').textContent = fmt(s.result.support);
        state.textContent = `done in ${s.result.seconds.toFixed(1)} s: masked ${s.heads.join(', ')} (${s.result.mask.mode}, ${s.result.mask.phase})`;
        $('#rerun-answer').dataset.done = 'true';
        return;
      }
      if (s.state === 'failed') { state.textContent = `failed: ${s.error}`; return; }
      await new Promise((ok) => setTimeout(ok, 250));
    }
  }
  chooseStep(0);
}

({ runs: runsPage, run: runPage, trial: trialPage })[document.body.dataset.page]?.();
