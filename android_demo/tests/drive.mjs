// Drive the demo page in headless Chromium (playwright-core + Debian's /usr/bin/chromium) and
// print one JSON object: {info, results: [...], error, console, statsText, modelText}.
//   node drive.mjs '{"url": "...", "runs": [{...run options}], "screenshot": "x.png",
//                    "chromium": "/usr/bin/chromium", "extraFlags": [], "timeoutMs": 120000}'
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
let ctx;
try {
  ctx = await chromium.launchPersistentContext(profile, {
    executablePath: spec.chromium ?? '/usr/bin/chromium', headless: true, args: flags,
    viewport: { width: 900, height: 900 },
  });
  const page = ctx.pages()[0] ?? await ctx.newPage();
  page.setDefaultTimeout(spec.timeoutMs ?? 120000);
  page.on('console', (m) => out.console.push(`${m.type()}: ${m.text()}`.slice(0, 500)));
  page.on('pageerror', (e) => out.console.push(`pageerror: ${e.message}`.slice(0, 500)));
  await page.goto(spec.url);
  await page.waitForFunction(() => window.demo !== undefined);
  try {
    out.info = await page.evaluate(() => window.demo.ready);
    for (const r of spec.runs ?? []) {
      const res = await page.evaluate(async (opts) => {
        const x = await window.demo.run(opts);
        await window.demo.show(opts.title ?? opts.strategy ?? 'plain', x.stats);
        return x;
      }, r);
      out.results.push(res);
    }
  } catch (e) {
    out.error = (await page.evaluate(() => window.demo.error()).catch(() => null)) ?? String(e.message ?? e);
  }
  out.statsText = await page.evaluate(() => document.getElementById('stats').innerText).catch(() => '');
  out.modelText = await page.evaluate(() => document.getElementById('model').innerText).catch(() => '');
  if (spec.screenshot) await page.screenshot({ path: spec.screenshot, fullPage: true });
} catch (e) {
  out.error = String(e.message ?? e);
} finally {
  if (ctx) await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out));
