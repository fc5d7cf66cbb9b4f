// Screenshots of Ray dashboard pages in headless Chromium (playwright-core), for
// bench/dashboard_screenshots.py, which writes the plan and reads what this prints.
//
//   node bench/dashboard_screenshots.mjs <plan.json>
//
// plan: {"playwright": "<playwright-core dir>", "chromium": "/usr/bin/chromium",
//        "shots": [{"url": ..., "out": "x.png", "kind": "page" | "tasks" | "logs",
//                   "expand": ["run smoke ga seed0"], "keyword": "stage", "scrollTo": "ray::run"}]}
// One browser for all shots; a shot that fails is reported and the rest still run.
import fs from 'fs';
import path from 'path';
import { pathToFileURL } from 'url';

const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { chromium } = await import(pathToFileURL(path.join(plan.playwright, 'index.mjs')).href);

// The flags that keep Chromium quiet on a machine without a network (no update, sync or
// background connections) and runnable as root without a GPU.
const browser = await chromium.launch({
  executablePath: plan.chromium,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-sync',
    '--disable-background-networking', '--disable-component-update'],
});

async function open(url) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  // The dashboard polls its API, so 'networkidle' may never come: a timeout here is fine.
  await page.goto(url, { waitUntil: 'networkidle', timeout: 30000 }).catch(() => {});
  await page.waitForTimeout(2000);
  return page;
}

// Job detail page: open "Ray Core Overview" (tasks and actors grouped by name) and any named rows.
async function tasks(page, shot) {
  const legend = page.getByText(/^Total: \d+/).first();
  const count = page.locator('text=/^\\d+ \\/ \\d+$/').first();  // "36 / 38" beside each bar
  const a = await legend.boundingBox();
  const b = await count.boundingBox();
  await page.mouse.click(a.x + 2, b.y + b.height / 2);  // the chevron left of the summary bar
  await page.waitForTimeout(1500);
  for (const name of shot.expand || []) {
    const row = page.getByText(name, { exact: true }).first();
    const r = await row.boundingBox().catch(() => null);
    if (r) {
      await page.mouse.click(r.x - 12, r.y + r.height / 2);  // that row's chevron
      await page.waitForTimeout(1000);
    }
  }
  await page.getByText('Ray Core Overview').first().evaluate(e => e.scrollIntoView({ block: 'start' }));
  await page.mouse.move(640, 400);
  await page.mouse.wheel(0, -60);
}

// Job detail page: the driver log filtered by a keyword, scrolled so the log pane fills the view.
async function logs(page, shot) {
  const box = page.getByLabel('Keyword').first();
  await box.fill(shot.keyword);
  await box.press('Enter');
  await page.waitForTimeout(1500);
  await box.evaluate(e => e.scrollIntoView({ block: 'start' }));
  await page.mouse.move(640, 400);
  await page.mouse.wheel(0, -130);
}

// Any page: bring the first element whose text starts with shot.scrollTo to the middle.
async function scrollTo(page, shot) {
  const hit = page.getByText(shot.scrollTo).first();
  await hit.evaluate(e => e.scrollIntoView({ block: 'center' }), null, { timeout: 5000 });
}

let failed = 0;
for (const shot of plan.shots) {
  const page = await open(shot.url);
  try {
    if (shot.kind === 'tasks') await tasks(page, shot);
    if (shot.kind === 'logs') await logs(page, shot);
    if (shot.scrollTo) await scrollTo(page, shot);
    await page.waitForTimeout(700);
    await page.screenshot({ path: shot.out });
    const text = (await page.innerText('body')).replace(/\s+/g, ' ');
    console.log(JSON.stringify({ out: shot.out, ok: true, text: text.slice(0, 4000) }));
  } catch (err) {
    failed += 1;
    await page.screenshot({ path: shot.out }).catch(() => {});
    console.log(JSON.stringify({ out: shot.out, ok: false, error: String(err) }));
  }
  await page.close();
}
await browser.close();
process.exit(failed ? 1 : 0);
