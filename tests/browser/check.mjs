// Loads pages of the demo through the edge in a real headless Chromium (Debian's), records
// console errors and page errors, dumps what the test asserts on as JSON on stdout, and saves
// a screenshot of each page. Usage: node check.mjs <chromium> <out-dir> <url>...
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [executablePath, outDir, ...urls] = process.argv.slice(2);
mkdirSync(outDir, { recursive: true });

const browser = await chromium.launch({
  executablePath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const results = [];
for (const [i, url] of urls.entries()) {
  const page = await context.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => errors.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));
  const response = await page.goto(url, { waitUntil: 'networkidle' });
  // Slot contents as rendered: item ids from the item links, titles as shown.
  const slots = await page.$$eval('[data-attune-slot]', (els) => els.map((el) => ({
    slot: el.getAttribute('data-attune-slot'),
    strategy: el.getAttribute('data-attune-strategy'),
    items: [...el.querySelectorAll('[data-attune-item]')].map((it) => ({
      href: it.querySelector('a')?.getAttribute('href') ?? null,
      title: it.querySelector('[data-attune-field="title"]')?.textContent ?? null,
    })),
    variants: [...el.querySelectorAll(':scope > [data-attune-variant]')].map((v) => ({
      name: v.getAttribute('data-attune-variant'),
      visible: v.checkVisibility(),
    })),
  })));
  const beaconScripts = await page.$$eval('script[src="/__attune/beacon.js"]', (s) => s.length);
  const screenshot = join(outDir, `page-${i}.png`);
  await page.screenshot({ path: screenshot, fullPage: false });
  results.push({
    url,
    status: response?.status() ?? 0,
    xAttune: response?.headers()['x-attune'] ?? null,
    slots,
    beaconScripts,
    errors,
    screenshot,
  });
  await page.close();
}
const cookies = await context.cookies();
// Names and values: the test looks the visitor id up at the origin (values are test-only ids).
await browser.close();
console.log(JSON.stringify({ results, cookies: cookies.map((c) => ({ name: c.name, value: c.value })) }));
