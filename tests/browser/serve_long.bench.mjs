// How `headhunt serve`'s trial page holds up on a long prompt, in headless Chromium: time until
// the page shows the prompt and answer, until a head's attention strip appears (first: the engine
// recomputes the layer; then: another head of the same layer, kept), and frame times while the
// prompt is scrolled end to end.
//
//   node tests/browser/serve_long.bench.mjs HEADHUNT_BIN RUNS_DIR RUN TRIAL HEAD1 HEAD2 [serve options]
//
// (A measurement, not a test: see docs/serve.md for a run of it.)

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';

const [bin, runs, run, trial, head1, head2, ...rest] = process.argv.slice(2);
if (!head2) {
  console.error('usage: node serve_long.mjs HEADHUNT_BIN RUNS_DIR RUN TRIAL HEAD1 HEAD2 [serve options]');
  process.exit(2);
}
const server = spawn(bin, ['serve', runs, '--port', '0', ...rest], { stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise((resolve, reject) => {
  let seen = '';
  server.stdout.on('data', (d) => { seen += d; const m = seen.match(/serving on (\S+)/); if (m) resolve(m[1]); });
  server.on('exit', (c) => reject(new Error(`headhunt serve exited with ${c}`)));
});
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const t0 = Date.now();
  await page.goto(`${url}trial?${new URLSearchParams({ run, trial })}`);
  await page.waitForSelector('#answer .tok', { timeout: 600_000 });
  const ready = Date.now() - t0;
  const tokens = await page.locator('#prompt span.p').count();
  const strip = async (head) => {
    const s = Date.now();
    await page.fill('#show-head', head);
    await page.click('#show-head-go');
    await page.waitForSelector(`#strip[data-ready^="${head}:"]`, { timeout: 600_000 });
    return Date.now() - s;
  };
  const first = await strip(head1);
  const cached = await strip(head2);
  // Scroll the prompt end to end in 60 steps, one per frame; the mean and worst frame.
  const frames = await page.evaluate(async () => {
    const box = document.getElementById('prompt');
    const times = [];
    let last = performance.now();
    for (let i = 0; i <= 60; i++) {
      box.scrollTop = (box.scrollHeight - box.clientHeight) * i / 60;
      await new Promise((ok) => requestAnimationFrame(() => ok()));
      const now = performance.now();
      times.push(now - last);
      last = now;
    }
    return { mean: times.reduce((a, b) => a + b, 0) / times.length, worst: Math.max(...times) };
  });
  console.log(JSON.stringify({ tokens, page_ready_ms: ready, strip_first_ms: first, strip_same_layer_ms: cached,
    scroll_frame_mean_ms: Number(frames.mean.toFixed(1)), scroll_frame_worst_ms: Number(frames.worst.toFixed(1)) }));
} finally {
  await browser.close();
  server.kill();
}
