// Drive the demo page in headless Chromium (playwright-core + Debian's /usr/bin/chromium) and
// print one JSON object: {info, results: [...], error, console, statsText, modelText}.
//   node drive.mjs '{"url": "...", "runs": [{...run options}], "screenshot": "x.png",
//                    "pages": ["url", ...], "chromium": "/usr/bin/chromium", "extraFlags": [],
//                    "timeoutMs": 120000}'
// "pages" opens more URLs in the same browser, without runs: out.pages[i] = {info, error, ...}.
// edgespec/demo/browser.py runs it (tests/demo, benchmarks/browser_speculation.py); the flags
// are the ones a sandboxed CI machine needs.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const spec = JSON.parse(process.argv[2]);
const profile = mkdtempSync(join(tmpdir(), 'edgespec-chromium-'));
const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ...(spec.extraFlags ?? [])];
const out = { info: null, results: [], error: null, console: [], statsText: '', modelText: '' };

/** Open `url` in a fresh page, await the demo, run `runs`; fill `o` ({info, results, error,
 * statsText, modelText}). */
async function visit(ctx, url, runs, o, screenshot) {
  const page = await ctx.newPage();
  page.setDefaultTimeout(spec.timeoutMs ?? 120000);
  page.on('console', (m) => out.console.push(`${m.type()}: ${m.text()}`.slice(0, 500)));
  page.on('pageerror', (e) => out.console.push(`pageerror: ${e.message}`.slice(0, 500)));
  await page.goto(url);
  await page.waitForFunction(() => window.demo !== undefined);
  try {
    o.info = await page.evaluate(() => window.demo.ready);
    for (const r of runs) {
      const res = await page.evaluate(async (opts) => {
        const x = await window.demo.run(opts);
        await window.demo.show(opts.title ?? opts.strategy ?? 'plain', x.stats);
        return x;
      }, r);
      o.results.push(res);
    }
  } catch (e) {
    o.error = (await page.evaluate(() => window.demo.error()).catch(() => null)) ?? String(e.message ?? e);
  }
  o.statsText = await page.evaluate(() => document.getElementById('stats').innerText).catch(() => '');
  o.modelText = await page.evaluate(() => document.getElementById('model').innerText).catch(() => '');
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  await page.close();
}

let ctx;
try {
  ctx = await chromium.launchPersistentContext(profile, {
    executablePath: spec.chromium ?? '/usr/bin/chromium', headless: true, args: flags,
    viewport: { width: 900, height: 900 },
  });
  if (spec.url) await visit(ctx, spec.url, spec.runs ?? [], out, spec.screenshot);
  // more pages in the same browser (one Chromium start): out.pages[i] for spec.pages[i]
  if (spec.pages) out.pages = [];
  for (const url of spec.pages ?? []) {
    const o = { info: null, results: [], error: null, statsText: '', modelText: '' };
    await visit(ctx, url, [], o, null);
    out.pages.push(o);
  }
} catch (e) {
  out.error = String(e.message ?? e);
} finally {
  if (ctx) await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out));
