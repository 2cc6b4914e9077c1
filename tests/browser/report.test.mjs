// Open a headhunt report in headless Chromium (Debian's) and check that it rendered: the
// retrieval heatmap has a size and one cell per head, hovering a cell shows its value, the NIAH
// heatmaps are there, and the page logged no errors. Writes a screenshot next to the report.
//
//   node report.test.mjs REPORT.html N_LAYERS N_HEADS [SCREENSHOT.png]

import { chromium } from 'playwright-core';
import path from 'node:path';

const [report, layers, heads, shot] = process.argv.slice(2);
if (!report || !layers || !heads) {
  console.error('usage: node report.test.mjs REPORT.html N_LAYERS N_HEADS [SCREENSHOT.png]');
  process.exit(2);
}
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('requestfailed', (r) => errors.push(`request failed: ${r.url()}`));
  await page.goto('file://' + path.resolve(report), { waitUntil: 'load' });

  const map = page.locator('svg.heatmap[id^="retrieval-heatmap"]').first();
  check(await map.count() === 1, 'no retrieval heatmap');
  const box = await map.boundingBox();
  check(box && box.width > 100 && box.height > 100, `retrieval heatmap has no size: ${JSON.stringify(box)}`);
  const cells = await map.locator('rect.cell').count();
  check(cells === Number(layers) * Number(heads), `retrieval heatmap has ${cells} cells, expected ${layers} x ${heads}`);
  check(await map.getAttribute('data-rows') === String(layers) && await map.getAttribute('data-cols') === String(heads),
        'heatmap dimensions in its attributes');

  // Hovering a cell shows its layer, head and value.
  const cell = map.locator('rect.cell').nth(Number(heads) + 1);
  await cell.hover();
  const tip = page.locator('#tooltip');
  check(await tip.isVisible(), 'no tooltip on hover');
  const text = await tip.textContent();
  check(/layer 1, head 1: [0-9.]+/.test(text ?? ''), `tooltip says "${text}"`);

  const niah = await page.locator('svg.heatmap[id^="niah-"]').count();
  check(niah >= 1, 'no NIAH heatmap');
  const first = await page.locator('svg.heatmap[id^="niah-"] rect.cell').count();
  check(first >= 1, 'the NIAH heatmap has no cells');

  await page.screenshot({ path: shot ?? report.replace(/\.html$/, '.png'), fullPage: true });
  check(errors.length === 0, `console errors: ${errors.join(' | ')}`);
} finally {
  await browser.close();
}
if (failures.length) {
  console.error('report test failed:\n  ' + failures.join('\n  '));
  process.exit(1);
}
console.log(`report test passed: ${report}`);
