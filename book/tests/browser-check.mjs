// The book in a real browser, run by scripts/test-book.sh: headless Chromium (Debian's package)
// driven by playwright-core, over a tiny static server on 127.0.0.1.
//
// - every page of SUMMARY.md (and the site root) loads with no console error, no page error, no
//   failed request and no HTTP error, and shows its title;
// - the search UI, typed into as a person would, finds "native sidecar" on the catalogs page, and
//   its result opens that page;
// - a screenshot of the quick start page is written to ARTIFACTS/quick-start.png.
//
// Environment: SITE (the built book), SUMMARY (book/src/SUMMARY.md), PLAYWRIGHT (path of the
// playwright-core package), CHROMIUM (the browser), ARTIFACTS (where the screenshot goes).
// Exits 1 listing every problem.

import { createServer } from 'node:http';
import { readFile, stat, mkdir } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { extname, join, normalize, sep } from 'node:path';
import { pathToFileURL } from 'node:url';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const site = env('SITE');
const summary = env('SUMMARY');
const artifacts = env('ARTIFACTS');
const { chromium } = await import(pathToFileURL(join(env('PLAYWRIGHT'), 'index.mjs')).href);

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css',
  '.json': 'application/json', '.svg': 'image/svg+xml', '.png': 'image/png', '.woff2': 'font/woff2',
  '.woff': 'font/woff', '.ttf': 'font/ttf', '.txt': 'text/plain; charset=utf-8', '.yaml': 'text/plain; charset=utf-8',
};

// A static file server for the built site, like `python3 -m http.server`, on a free port.
const server = createServer(async (request, response) => {
  try {
    let path = decodeURIComponent(new URL(request.url, 'http://x').pathname);
    let file = normalize(join(site, path));
    if (!file.startsWith(normalize(site + sep)) && file !== normalize(site)) throw new Error('outside the site');
    if ((await stat(file)).isDirectory()) file = join(file, 'index.html');
    const body = await readFile(file);
    response.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' });
    response.end(body);
  } catch {
    response.writeHead(404, { 'content-type': 'text/plain' });
    response.end('not found\n');
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${server.address().port}/`;

// The pages in the summary, as the site names them.
const pages = ['']
  .concat([...readFileSync(summary, 'utf8').matchAll(/\]\(([^)\s]+)\.md\)/g)].map(([, p]) => `${p}.html`))
  .map((p) => p.replace(/(^|\/)README\.html$/, '$1index.html'));

const problems = [];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  chromiumSandbox: false,
  // No network but loopback here: keep Chromium from reaching out on its own.
  args: ['--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-default-apps'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  // A tab whose console, page errors, failed requests and HTTP errors are all problems, reported
  // against the page it shows.
  const tab = async () => {
    const page = await context.newPage();
    page.setDefaultTimeout(20_000);
    const state = { page, current: '' };
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(`${state.current}: console error: ${message.text()}`);
    });
    page.on('pageerror', (error) => problems.push(`${state.current}: page error: ${error.message}`));
    // A request the page itself cancelled (net::ERR_ABORTED: e.g. the favicon while a screenshot
    // ends the page's loading) is not a broken page; a missing file still shows as an HTTP error.
    page.on('requestfailed', (request) => {
      const error = request.failure()?.errorText;
      if (error !== 'net::ERR_ABORTED') problems.push(`${state.current}: request failed: ${request.url()} (${error})`);
    });
    page.on('response', (response) => {
      if (response.status() >= 400) problems.push(`${state.current}: HTTP ${response.status()} for ${response.url()}`);
    });
    return state;
  };

  // Every page, four tabs at a time; each waits until the network is idle, so late requests
  // (fonts, the search index) are seen too.
  const queue = [...pages];
  const visit = async (state) => {
    for (let path = queue.shift(); path !== undefined; path = queue.shift()) {
      state.current = `/${path}`;
      const { page } = state;
      const response = await page.goto(base + path, { waitUntil: 'load' });
      if (!response || response.status() !== 200) {
        problems.push(`${state.current}: status ${response?.status()}`);
        continue;
      }
      await page.waitForLoadState('networkidle');
      const title = (await page.locator('main h1').first().textContent({ timeout: 5_000 }).catch(() => ''))?.trim();
      if (!title) problems.push(`${state.current}: no title (main h1)`);
      const text = await page.locator('main').innerText();
      if (/\{\{#include/.test(text) && !path.startsWith('contributing')) {
        problems.push(`${state.current}: an {{#include}} was not replaced`);
      }
      if (path === 'benchmarks.html') {
        // The harness's two pictures, inline: each drawn with its lines and its legend.
        const pictures = await page.locator('main svg').evaluateAll((svgs) => svgs.map((svg) => ({
          lines: svg.querySelectorAll('polyline, path, line').length,
          text: svg.textContent,
          height: svg.getBoundingClientRect().height,
        })));
        const drawn = pictures.filter((p) => p.lines >= 8 && p.height > 100 && /sidecar-injector/.test(p.text) && /Go baseline/.test(p.text));
        if (drawn.length !== 2) problems.push(`${state.current}: ${drawn.length} of the 2 benchmark pictures drawn (${JSON.stringify(pictures.map((p) => [p.lines, p.height]))})`);
      }
    }
  };
  const tabs = await Promise.all([1, 2, 3, 4].map(tab));
  await Promise.all(tabs.map(visit));
  const state = tabs[0];
  const { page } = state;

  // Search as a person does: open the search bar, type, read the results, follow one.
  state.current = 'search';
  await page.goto(base + 'index.html', { waitUntil: 'load' });
  await page.click('#mdbook-search-toggle');
  const bar = page.locator('#mdbook-searchbar');
  await bar.waitFor({ state: 'visible' });
  await bar.pressSequentially('native sidecar', { delay: 30 });
  const results = page.locator('#mdbook-searchresults li a');
  await results.first().waitFor({ state: 'visible', timeout: 10_000 }).catch(() => {});
  const found = await results.evaluateAll((links) => links.map((a) => ({ href: a.getAttribute('href'), text: a.textContent })));
  const header = (await page.locator('#mdbook-searchresults-header').textContent())?.trim();
  const hit = found.find((r) => r.href?.includes('sidecar-injector/catalogs.html') && /native/i.test(r.text ?? ''));
  if (!hit) {
    problems.push(`search: "native sidecar" did not find the catalogs page's native sidecars (header: ${header}; results: ${JSON.stringify(found)})`);
  } else {
    await page.locator('#mdbook-searchresults li a', { hasText: hit.text.trim() }).first().click();
    await page.waitForURL(/sidecar-injector\/catalogs\.html/);
    const marked = await page.locator('main mark').count();
    if (!(await page.locator('main h2', { hasText: 'Native sidecars' }).count())) {
      problems.push('search: the result did not open the page with "Native sidecars"');
    }
    console.log(`browser: search "native sidecar": ${found.length} result(s) (${header}); opened ${page.url().replace(base, '/')} with ${marked} highlight(s)`);
  }

  state.current = 'screenshot';
  await mkdir(artifacts, { recursive: true });
  await page.goto(base + 'quick-start.html', { waitUntil: 'networkidle' });
  const shot = join(artifacts, 'quick-start.png');
  await page.screenshot({ path: shot });
  console.log(`browser: ${pages.length} pages loaded in ${browser.version()}; screenshot ${shot}`);
} finally {
  await browser.close();
  server.close();
}

if (problems.length) {
  console.error(`browser: ${problems.length} problem(s):`);
  for (const problem of problems) console.error(`  - ${problem}`);
  process.exit(1);
}
