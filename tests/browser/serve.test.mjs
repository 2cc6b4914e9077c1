// `headhunt serve` in headless Chromium, doing what a person does: open the runs page, open a
// detection trial of SmolLM2, click an answer token and see the heads that copied it (checked
// against the trial's record), click a head and see its attention strip (its argmax where the
// record put it), mask the top 5 heads and see the rerun's answer appear, equal to that of
// `headhunt niah --scores DETECT --mask-top 5` on the same trial. Screenshots go to OUT.
//
//   node serve.test.mjs HEADHUNT_BIN RUNS_DIR OUT_DIR
//
// RUNS_DIR holds `detect` (a detection run) and `niah-top5` (its top 5 heads masked).

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const [bin, runs, out] = process.argv.slice(2);
if (!bin || !runs || !out) {
  console.error('usage: node serve.test.mjs HEADHUNT_BIN RUNS_DIR OUT_DIR');
  process.exit(2);
}
fs.mkdirSync(out, { recursive: true });
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); };
const records = (dir) => fs.readFileSync(path.join(runs, dir, 'trials.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const key = (r) => `n${r.needle}-l${r.length}-d${r.depth}`;

// The server, on a free port; its first line says where.
const server = spawn(bin, ['serve', runs, '--port', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise((resolve, reject) => {
  let seen = '';
  server.stdout.on('data', (d) => {
    seen += d;
    const m = seen.match(/serving on (\S+)/);
    if (m) resolve(m[1]);
  });
  server.on('exit', (c) => reject(new Error(`headhunt serve exited with ${c}`)));
  setTimeout(() => reject(new Error('headhunt serve did not start in 120 s')), 120_000).unref();
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));

  // The runs page lists both runs, done.
  await page.goto(url);
  for (const run of ['detect', 'niah-top5']) {
    check(await page.locator(`tr[data-run="${run}"] .status`).textContent() === 'done', `${run} is not listed as done`);
  }
  await page.screenshot({ path: path.join(out, 'serve-runs.png') });

  // The detection run, then its first trial.
  await page.click('tr[data-run="detect"] a');
  await page.waitForSelector('#headmap td.cell');
  const first = records('detect')[0];
  await page.click(`a[href*="trial=${key(first)}"]`);
  await page.waitForSelector('#answer .tok');
  const t = await page.evaluate(async (k) => (await fetch(`/api/trial?run=detect&trial=${k}`)).json(), key(first));
  check(t.prompt.length === first.prompt_tokens, `the prompt rebuilds to ${t.prompt.length} tokens, the record says ${first.prompt_tokens}`);

  // An answer token that some heads copied, by the record's argmax.
  const H = t.n_heads;
  const label = (h) => `${Math.floor(h / H)}-${h % H}`;
  const copied = first.generated.map((tok, s) => first.argmax[s].map((j, h) => (t.prompt[j] === tok ? h : -1)).filter((h) => h >= 0));
  // The token the most heads copied (the first of equals).
  const step = copied.reduce((best, hs, s) => (hs.length > copied[best].length ? s : best), 0);
  check(copied[step].length > 0, 'no answer token was copied by any head');
  await page.click(`#answer .tok[data-step="${step}"]`);
  const listed = await page.locator('#copying .head').evaluateAll((bs) => bs.map((b) => b.dataset.head));
  const expected = copied[step].map(label);
  check(JSON.stringify([...listed].sort()) === JSON.stringify([...expected].sort()),
        `copying heads listed ${listed} against the record's ${expected}`);

  // The best-scoring of them: its attention strip, its argmax where the record has it.
  const head = listed[0];
  await page.click(`#copying .head[data-head="${head}"]`);
  await page.waitForSelector(`#strip[data-ready="${head}:${step}"]`, { timeout: 120_000 });
  const [l, h] = head.split('-').map(Number);
  const recorded = first.argmax[step][l * H + h];
  const shown = Number(await page.getAttribute('#strip', 'data-argmax'));
  if (shown !== recorded) {
    // A tie within rounding may fall either way; the recorded key must still be a maximum.
    const a = await page.evaluate(async (q) => (await fetch(`/api/attention?${q}`)).json(),
      new URLSearchParams({ run: 'detect', trial: key(first), head, step }).toString());
    check(a.probs[recorded] >= Math.max(...a.probs) - 1e-4, `head ${head} step ${step}: argmax ${shown}, the record says ${recorded}`);
  }
  const tinted = await page.locator('#prompt span.p[style*="background"]').count();
  check(tinted > 0, 'no prompt token is tinted by the head\'s attention');
  await page.screenshot({ path: path.join(out, 'serve-trial.png'), fullPage: true });

  // Mask the top 5 and watch the rerun's answer arrive.
  await page.fill('#mask-k', '5');
  await page.click('#mask-top');
  await page.waitForSelector('#rerun-answer[data-done="true"]', { timeout: 300_000 });
  const rerun = (await page.textContent('#rerun-answer')).trim();
  const reference = records('niah-top5').find((r) => key(r) === key(first));
  check(rerun === reference.answer, `the rerun answered "${rerun}", niah --mask-top 5 answered "${reference.answer}"`);
  await page.locator('#intervene').scrollIntoViewIfNeeded();
  await page.screenshot({ path: path.join(out, 'serve-intervene.png'), fullPage: true });
  check(errors.length === 0, `console errors: ${errors.join(' | ')}`);
} finally {
  await browser.close();
  server.kill();
}
if (failures.length) {
  console.error('serve test failed:\n  ' + failures.join('\n  '));
  process.exit(1);
}
console.log(`serve test passed: screenshots in ${out}`);
