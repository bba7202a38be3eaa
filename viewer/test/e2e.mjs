// Browser test of the viewer: Debian's Chromium driven by playwright-core, against a server of
// daily map files: the real collector (`--collector BIN`, seeded by copying the map files into a
// fresh --output-dir) or the mock API (`--mock`, for developing the viewer alone).
//
//   node test/e2e.mjs --collector target/debug/trafficmap-collector --maps ../golden/maps
//   node test/e2e.mjs --mock --maps test/fixtures/maps
//   options: --artifacts DIR (screenshots, downloads; default ../target/test-artifacts/viewer)
//            --chromium PATH (default /usr/bin/chromium)
//
// Every step loads a state through the URL, acts as a user would (clicks, keys), and asserts
// what is drawn (node and link counts from the page's hooks, pixels at node positions in a
// screenshot) and what the panels say, against values computed here from the map files. Any
// console error, page error or request to another host fails the run. Ends with
// "N passed, M failed"; exits non-zero on any failure; stops itself after a time limit.

import { spawn } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { PNG } from "pngjs";
import { expectationsFor } from "./expectations.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const opt = (k, d) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : d);
const mapsDir = resolve(opt("--maps", join(here, "fixtures/maps")));
const artifacts = resolve(opt("--artifacts", join(here, "../../target/test-artifacts/viewer")));
const chromiumPath = opt("--chromium", "/usr/bin/chromium");
const collectorBin = opt("--collector", null);
const TOTAL_LIMIT_MS = 8 * 60 * 1000;
const STEP_LIMIT_MS = 60 * 1000;

const killer = setTimeout(() => {
  console.error(`e2e: still running after ${TOTAL_LIMIT_MS / 1000} s, giving up`);
  process.exit(2);
}, TOTAL_LIMIT_MS);
killer.unref();

rmSync(artifacts, { recursive: true, force: true });
mkdirSync(artifacts, { recursive: true });

// ------------------------------------------------------------------ the data, read here

const files = readdirSync(mapsDir).filter((f) => /^(instances|clusters|security-groups|workloads)-\d{8}\.json$/.test(f));
const maps = {};
for (const f of files) maps[f.slice(0, -5)] = JSON.parse(readFileSync(join(mapsDir, f), "utf8"));
const days = [...new Set(files.map((f) => f.match(/(\d{4})(\d{2})(\d{2})/).slice(1).join("-")))].sort().reverse();
const mapOf = (view, day) => maps[`${view}-${day.replaceAll("-", "")}`];
const addDay = (day) => new Date(Date.parse(`${day}T00:00:00Z`) + 864e5).toISOString().slice(0, 10);
if (days.length < 2) throw new Error(`need at least two days of maps in ${mapsDir}`);
const newest = days[0];
const previous = days[1];
const expect = expectationsFor(maps, newest);

/** Links drawn for a map: self-links are not drawn, and a pair's first link stands for both. */
function drawnLinks(doc, keep = () => true) {
  const seen = new Set();
  let n = 0;
  for (const l of doc.links) {
    if (l.source === l.target || !keep(l)) continue;
    const k = `${l.source}>${l.target}`;
    if (seen.has(k)) continue;
    seen.add(k);
    n++;
  }
  return n;
}

/**
 * The filter rules of docs/viewer.md, written out again independently of the viewer's code:
 * a suppressed node's links go (external addresses match `external`, nodes without an env or
 * archdomain `unknown`), and with "hide suppressed nodes too" (on unless `hideNodes` is false)
 * the node goes too, and so do nodes that lose every link; without it those stay. Links under
 * minBytes go, and nodes that lose every link to that go too (nodes that never had one stay).
 * `ids` and `pairs`: the nodes and the [source, target] pairs shown (self-links of shown nodes
 * included), what an export of the screen covers.
 */
function expectedVisible(doc, { hideEnv = [], envRe = null, archRe = null, minBytes = 0, hideNodes = true }) {
  const value = (n, k) => n[k] || (n.kind === "external" ? "external" : "unknown");
  const er = envRe ? new RegExp(envRe, "i") : null;
  const ar = archRe ? new RegExp(archRe, "i") : null;
  const suppressed = new Set(doc.nodes.filter((n) => (n.env && hideEnv.includes(n.env)) || (er && er.test(value(n, "env"))) || (ar && ar.test(value(n, "archdomain")))).map((n) => n.id));
  const unsuppressed = (l) => !suppressed.has(l.source) && !suppressed.has(l.target);
  const keep = (l) => unsuppressed(l) && l.bytes_to_target + l.bytes_to_source >= minBytes;
  const linked = new Set();
  const hadLinks = new Set();
  for (const l of doc.links) {
    if (l.source === l.target) continue;
    if (hideNodes || unsuppressed(l)) {
      hadLinks.add(l.source);
      hadLinks.add(l.target);
    }
    if (keep(l)) {
      linked.add(l.source);
      linked.add(l.target);
    }
  }
  const nodes = doc.nodes.filter((n) => !(hideNodes && suppressed.has(n.id)) && (!hadLinks.has(n.id) || linked.has(n.id)));
  const ids = new Set(nodes.map((n) => n.id));
  const pairs = [...new Set(doc.links.filter((l) => (l.source === l.target ? ids.has(l.source) : keep(l))).map((l) => JSON.stringify([l.source, l.target])))].map((k) => JSON.parse(k));
  return { nodes: nodes.length, links: drawnLinks(doc, keep), suppressed: suppressed.size, ids: [...ids], pairs };
}

const expectedAfterFilters = expectedVisible;

/** new / gone / changed (>= 2x either way) / same links between two maps. */
function expectedDiff(before, after) {
  const key = (l) => `${l.source}>${l.target}`;
  const b = new Map(before.links.map((l) => [key(l), l]));
  const a = new Set(after.links.map(key));
  const c = { new: 0, gone: 0, changed: 0, same: 0 };
  for (const l of after.links) {
    const o = b.get(key(l));
    if (!o) c.new++;
    else {
      const x = Math.max(o.bytes_to_target + o.bytes_to_source, 1);
      const y = Math.max(l.bytes_to_target + l.bytes_to_source, 1);
      c[y / x >= 2 || x / y >= 2 ? "changed" : "same"]++;
    }
  }
  for (const l of before.links) if (!a.has(key(l))) c.gone++;
  return c;
}

/** Links drawn in a diff with "only changes": changed, new or gone, not to itself, one per pair. */
function expectedChangedDrawn(before, after) {
  const key = (l) => `${l.source}>${l.target}`;
  const bytes = (l) => Math.max(l.bytes_to_target + l.bytes_to_source, 1);
  const b = new Map(before.links.map((l) => [key(l), l]));
  const a = new Set(after.links.map(key));
  const drawn = new Set();
  for (const l of after.links) {
    const o = b.get(key(l));
    if (l.source !== l.target && (!o || bytes(l) / bytes(o) >= 2 || bytes(o) / bytes(l) >= 2)) drawn.add(key(l));
  }
  for (const l of before.links) if (!a.has(key(l)) && l.source !== l.target) drawn.add(key(l));
  return drawn.size;
}

// ------------------------------------------------------------------ the server

/** The suppression presets the collector is configured with (`[viewer]`), for the preset step. */
const PRESETS = [
  { name: "No external addresses", env: "^external$", archdomain: "", hide_nodes: true },
  { name: "Monitoring links", env: "", archdomain: expect.archRegex, hide_nodes: false },
];

async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

async function startBackend() {
  if (collectorBin) {
    const port = await freePort();
    const out = mkdtempSync(join(tmpdir(), "trafficmap-e2e-"));
    for (const f of files) cpSync(join(mapsDir, f), join(out, f));
    const log = [];
    const data = mkdtempSync(join(tmpdir(), "trafficmap-e2e-data-"));
    // Days come from the map files; every other range is built from the store (one path per
    // question: a range is never a sum of daily files), so the store gets the reports the golden
    // maps were made from, with the golden enrichment, and keeps them as long as they are old.
    const enrich = resolve(mapsDir, "../enrich");
    const config = join(data, "collector.toml");
    writeFileSync(
      config,
      [
        "allow_unauthenticated = true",
        "[retention]",
        'minutes = "400d"',
        'hours = "400d"',
        'days = "400d"',
        "[enrich]",
        `inventory_file = ${JSON.stringify(join(enrich, "inventory.toml"))}`,
        `foreign_file = ${JSON.stringify(join(enrich, "foreign-ips.txt"))}`,
        `price_file = ${JSON.stringify(join(enrich, "prices.csv"))}`,
        "[enrich.ec2]",
        `snapshot_file = ${JSON.stringify(join(enrich, "ec2-snapshot.json"))}`,
        "[enrich.dns]",
        "enabled = false",
        "[enrich.env]",
        'aliases = { "production" = "prod" }',
        // The viewer's suppression presets (issue 12): served by /api/v1/viewer-config.
        ...PRESETS.flatMap((p) => ["[[viewer.suppression_presets]]", ...Object.entries(p).map(([k, v]) => `${k} = ${JSON.stringify(v)}`)]),
        "",
      ].join("\n"),
    );
    const child = spawn(resolve(collectorBin), ["serve", "--config", config, "--listen", `127.0.0.1:${port}`, "--output-dir", out, "--data-dir", data, "--no-dns"], { stdio: ["ignore", "pipe", "pipe"] });
    // Never leave a collector behind, whatever way this process ends.
    process.on("exit", () => child.kill("SIGKILL"));
    child.stdout.on("data", (d) => log.push(d.toString()));
    child.stderr.on("data", (d) => log.push(d.toString()));
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 30000;
    for (;;) {
      try {
        const r = await fetch(`${url}/healthz`);
        if (r.ok) break;
      } catch {
        // not listening yet
      }
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the collector did not come up:\n${log.join("")}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const reports = resolve(mapsDir, "../reports");
    for (const f of readdirSync(reports).filter((f) => f.endsWith(".json")).sort()) {
      const r = await fetch(`${url}/api/v1/reports`, { method: "POST", headers: { "Content-Type": "application/json" }, body: readFileSync(join(reports, f)) });
      if (r.status !== 200) throw new Error(`report ${f}: ${r.status} ${await r.text()}`);
    }
    return {
      url,
      stop: () => {
        child.kill("SIGTERM");
        writeFileSync(join(artifacts, "collector.log"), log.join(""));
        rmSync(out, { recursive: true, force: true });
        rmSync(data, { recursive: true, force: true });
      },
    };
  }
  const { startServer } = await import("./server.mjs");
  const { server, url } = await startServer({ mapsDir, presets: PRESETS });
  return { url, stop: () => server.close() };
}

// ------------------------------------------------------------------ the browser

const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--enable-unsafe-swiftshader"];

async function openBrowser(extraFlags = []) {
  const profile = mkdtempSync(join(tmpdir(), "trafficmap-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    args: [...FLAGS, ...extraFlags],
    viewport: { width: 1400, height: 860 },
    acceptDownloads: true,
    timeout: 30000,
  });
  return { context, close: async () => { await context.close(); rmSync(profile, { recursive: true, force: true }); } };
}

const problems = [];

/** Fails the run on console errors, page errors and any request that leaves the test server. */
function watch(page, base) {
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(base) && !u.startsWith("blob:") && !u.startsWith("data:")) problems.push(`request outside the test server: ${u}`);
  });
  page.setDefaultTimeout(30000);
}

async function ready(page) {
  await page.waitForFunction(() => window.__trafficmap?.ready === true, null, { timeout: 45000 });
  return page.evaluate(() => window.__trafficmap.stats());
}

/**
 * Loads a state. Headless Chromium's WebGL is software (SwiftShader), where the viewer picks
 * its canvas renderer; `renderer=webgl` makes it use sigma, which is what GPUs get.
 */
async function open(page, base, query = "") {
  const q = query.includes("renderer=") ? query : [query, "renderer=webgl"].filter(Boolean).join("&");
  await page.goto(`${base}/?${q}`);
  return ready(page);
}

function eq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

function ok(cond, what) {
  if (!cond) throw new Error(what);
}

/** Screenshot of the map, kept as an artifact; returns the decoded image. */
async function shot(page, name) {
  const buf = await page.screenshot({ path: join(artifacts, `${name}.png`) });
  return PNG.sync.read(buf);
}

const hex = (c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));

/**
 * Checks that nodes are really drawn: at each node's centre (from the page's hooks) the
 * screenshot has the node's fill colour, not the background.
 */
async function assertNodesDrawn(page, img, ids) {
  const box = await page.locator("#map").boundingBox();
  for (const id of ids) {
    const n = await page.evaluate((i) => window.__trafficmap.node(i), id);
    ok(n, `node ${id} is not in the drawn graph`);
    const x = Math.round(box.x + n.x);
    const y = Math.round(box.y + n.y);
    ok(x >= 0 && y >= 0 && x < img.width && y < img.height, `node ${id} is outside the screenshot`);
    // Search a few pixels around the centre: labels or a neighbour's edge may cross the centre.
    const want = hex(n.color);
    let best = Infinity;
    for (let dy = -2; dy <= 2; dy++) {
      for (let dx = -2; dx <= 2; dx++) {
        const o = ((y + dy) * img.width + (x + dx)) * 4;
        const d = Math.abs(img.data[o] - want[0]) + Math.abs(img.data[o + 1] - want[1]) + Math.abs(img.data[o + 2] - want[2]);
        best = Math.min(best, d);
      }
    }
    ok(best <= 40, `node ${id} at (${x}, ${y}) is not drawn in ${n.color} (closest colour distance ${best})`);
  }
}

/**
 * Points at a node once the map holds still (a resize or the end of the layout moves it: a
 * position read a frame too early misses) and asserts that the tooltip names it. Returns the
 * page coordinates, to click there.
 */
async function pointAtNode(page, id, label) {
  let prev = null;
  for (let i = 0; i < 100; i++) {
    await frames(page);
    const box = await page.locator("#map").boundingBox();
    const n = await page.evaluate((i) => window.__trafficmap.node(i), id);
    const at = { x: box.x + n.x, y: box.y + n.y };
    if (prev && at.x === prev.x && at.y === prev.y) {
      await page.mouse.move(at.x, at.y);
      await page.waitForSelector("#tooltip:not([hidden])");
      eq((await page.locator("#tooltip .t").textContent()).trim(), label, "tooltip title");
      return at;
    }
    prev = at;
  }
  throw new Error(`node ${id} never held still`);
}

/** Waits for two animation frames: whatever was scheduled has been drawn. */
function frames(page) {
  return page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

/** Clicks a link where no node covers it, and checks the link panel. */
async function clickLink(page, l) {
  await frames(page);
  const nodes = await page.evaluate(() => window.__trafficmap.nodeIds().map((id) => window.__trafficmap.node(id)));
  const a = await page.evaluate((id) => window.__trafficmap.node(id), l.source);
  const b = await page.evaluate((id) => window.__trafficmap.node(id), l.target);
  let best = null;
  for (let t = 0.2; t <= 0.8; t += 0.02) {
    const p = { x: a.x + t * (b.x - a.x), y: a.y + t * (b.y - a.y) };
    const clear = Math.min(...nodes.map((n) => Math.hypot(n.x - p.x, n.y - p.y) - n.r));
    if (!best || clear > best.clear) best = { ...p, clear };
  }
  ok(best.clear > 6, `every point of the link is under a node (best clearance ${best.clear.toFixed(1)} px)`);
  const box = await page.locator("#map").boundingBox();
  await page.mouse.click(box.x + best.x, box.y + best.y);
  await page.waitForFunction(() => document.querySelector("#details .kind")?.textContent === "link");
  eq((await page.locator("#details h2").textContent()).trim(), l.title, "link panel title");
  const fields = await page.$$eval("#details dd[data-field]", (dds) => Object.fromEntries(dds.map((x) => [x.dataset.field, x.textContent.trim()])));
  eq(fields, l.fields, "link panel fields");
}

// ---- issue 14 items 2 and 3 (v14-links): bundles and top N, from the map files ----

/** The env grouping's key of a node (model.js groupKey, written out again). */
const envGroupOf = (n) => (n.kind === "external" ? "external" : `env:${n.env ?? "(no env)"}`);
const labelOf = (doc, id) => doc.nodes.find((n) => n.id === id).label;
const bytesOf = (l) => l.bytes_to_target + l.bytes_to_source;

/** Links between two distinct groups, none of them expanded, kept by `keep`, per pair of groups. */
function interGroupLinks(doc, keyOf, expanded = new Set(), keep = () => true) {
  const byId = new Map(doc.nodes.map((n) => [n.id, n]));
  const out = new Map();
  for (const l of doc.links) {
    if (l.source === l.target || !keep(l)) continue;
    const a = keyOf(byId.get(l.source));
    const b = keyOf(byId.get(l.target));
    if (a === b || expanded.has(a) || expanded.has(b)) continue;
    const k = JSON.stringify([a, b].sort());
    if (!out.has(k)) out.set(k, []);
    out.get(k).push(l);
  }
  return out;
}

/** The bundles expected: [{pair (sorted), count, bytes}], sorted by pair. */
function expectedBundles(doc, keyOf, expanded, keep) {
  return [...interGroupLinks(doc, keyOf, expanded, keep)].map(([k, ls]) => ({ pair: JSON.parse(k), count: ls.length, bytes: ls.reduce((a, l) => a + bytesOf(l), 0) })).sort((x, y) => (JSON.stringify(x.pair) < JSON.stringify(y.pair) ? -1 : 1));
}

/** The page's bundles in the same form. */
const sortBundles = (bs) => bs.map((b) => ({ pair: [b.source, b.target].sort(), count: b.count, bytes: b.bytes })).sort((x, y) => (JSON.stringify(x.pair) < JSON.stringify(y.pair) ? -1 : 1));

/** A bundle's ten biggest links (ties: map order). */
function bundleTop(doc, keyOf, a, b) {
  const ls = interGroupLinks(doc, keyOf).get(JSON.stringify([a, b].sort())) ?? [];
  return ls.map((l, i) => [l, i]).sort((x, y) => bytesOf(y[0]) - bytesOf(x[0]) || x[1] - y[1]).slice(0, 10).map(([l]) => l);
}

/** Drawn links (one per pair) inside one group. */
function innerPairs(doc, keyOf) {
  const byId = new Map(doc.nodes.map((n) => [n.id, n]));
  return drawnLinks(doc, (l) => keyOf(byId.get(l.source)) === keyOf(byId.get(l.target)));
}

/** The `n` biggest drawn links (one per pair, the pair's first link), as sorted JSON pairs. */
function topPairs(doc, n) {
  const seen = new Set();
  const drawn = [];
  doc.links.forEach((l) => {
    const k = JSON.stringify([l.source, l.target]);
    if (l.source === l.target || seen.has(k)) return;
    seen.add(k);
    drawn.push(l);
  });
  return drawn.map((l, i) => [l, i]).sort((x, y) => bytesOf(y[0]) - bytesOf(x[0]) || x[1] - y[1]).slice(0, n).map(([l]) => JSON.stringify([l.source, l.target])).sort();
}

/** Focus on `ids`: exactly the nodes outside their neighbourhood are faded. */
async function assertFocus(page, doc, ids, what) {
  const near = new Set(ids);
  for (const l of doc.links) {
    if (l.source === l.target) continue;
    if (ids.includes(l.source)) near.add(l.target);
    if (ids.includes(l.target)) near.add(l.source);
  }
  const colours = await page.evaluate(() => window.__trafficmap.nodeIds().map((id) => [id, window.__trafficmap.node(id).color]));
  const faded = colours.filter(([, c]) => c === "#dde1e7").map(([id]) => id).sort();
  eq(faded, colours.map(([id]) => id).filter((id) => !near.has(id)).sort(), `${what}: faded nodes`);
  eq((await page.evaluate(() => window.__trafficmap.stats())).highlighted, near.size, `${what}: highlighted nodes`);
}

/** The point of a bundle (viewport) farthest from every node. */
async function clearPointOn(page, seg) {
  const nodes = await page.evaluate(() => window.__trafficmap.nodeIds().map((id) => window.__trafficmap.node(id)));
  let best = null;
  for (let t = 0.2; t <= 0.8; t += 0.02) {
    const p = { x: seg.ax + t * (seg.bx - seg.ax), y: seg.ay + t * (seg.by - seg.ay) };
    const clear = Math.min(...nodes.map((n) => Math.hypot(n.x - p.x, n.y - p.y) - n.r));
    if (!best || clear > best.clear) best = { ...p, clear };
  }
  ok(best.clear > 6, `every point of the bundle is under a node (best clearance ${best.clear.toFixed(1)} px)`);
  return best;
}
// ---- end issue 14 items 2 and 3 (helpers) ----

// ------------------------------------------------------------------ the steps

const results = [];

async function step(name, fn) {
  const before = problems.length;
  const t = Date.now();
  try {
    await Promise.race([fn(), new Promise((_, rej) => setTimeout(() => rej(new Error(`step timed out after ${STEP_LIMIT_MS / 1000} s`)), STEP_LIMIT_MS))]);
    if (problems.length > before) throw new Error(problems.slice(before).join("; "));
    results.push([name, true]);
    console.log(`ok      ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    results.push([name, false]);
    console.log(`FAILED  ${name}: ${e.message}`);
  }
}

const backend = await startBackend();
const base = backend.url;
console.log(`e2e: ${collectorBin ? `collector ${collectorBin}` : "mock API"} at ${base}, maps from ${mapsDir}, days ${days.join(", ")}`);

const browser = await openBrowser();
const page = await browser.context.newPage();
watch(page, base);

try {
  await step("picks the canvas renderer where WebGL is software only", async () => {
    await page.goto(`${base}/`);
    const st = await ready(page);
    eq(st.renderer, "canvas", "renderer on SwiftShader");
    eq((await page.locator("#renderer-kind").textContent()).trim(), "Canvas 2D (WebGL is software-only here)", "renderer in the status line");
    const doc = mapOf("instances", newest);
    eq([st.canvasDrawn.nodes, st.canvasDrawn.edges], [doc.nodes.length, drawnLinks(doc)], "nodes and links painted");
    await assertNodesDrawn(page, await shot(page, "00-auto-canvas"), expect.pixelNodes);
  });

  await step("loads the newest day, every node and link of the instances map drawn", async () => {
    const st = await open(page, base);
    const state = await page.evaluate(() => window.__trafficmap.state());
    eq(state.day, newest, "day");
    eq(await page.evaluate(() => window.__trafficmap.days()), days, "day picker days (from /api/v1/days)");
    const doc = mapOf("instances", newest);
    eq(st.nodes, doc.nodes.length, "nodes drawn");
    eq(st.edges, drawnLinks(doc), "links drawn");
    eq(st.renderer, "webgl", "renderer");
    eq(st.nodesInView, doc.nodes.length, "nodes inside the viewport");
    const img = await shot(page, "01-instances-by-env");
    await assertNodesDrawn(page, img, expect.pixelNodes);
    eq(await page.locator("#day option").allTextContents(), days, "day picker options");
    eq((await page.locator("#count-nodes").textContent()).trim(), `${doc.nodes.length} of ${doc.nodes.length} nodes`, "status line");
  });

  await step("grouping: none, env, archdomain at levels 1 and 2, split by env", async () => {
    await open(page, base);
    await page.getByRole("radio", { name: "None" }).check({ force: true });
    let st = await ready(page);
    eq(st.groups, [], "groups when ungrouped");
    await shot(page, "02-ungrouped");
    await page.locator('input[name="group"][value="env"]').check({ force: true });
    st = await ready(page);
    eq(st.groups, expect.envGroups, "env groups");
    await page.locator('input[name="group"][value="archdomain"]').check({ force: true });
    st = await ready(page);
    eq(st.groups, expect.archGroups[1], "archdomain groups at level 1");
    await page.selectOption("#level", "2");
    st = await ready(page);
    eq(st.groups, expect.archGroups[2], "archdomain groups at level 2");
    await page.locator("#split").check();
    st = await ready(page);
    eq(st.groups, expect.archSplitGroups[2], "archdomain groups at level 2 split by env");
    const img = await shot(page, "03-archdomain-level2-split");
    await assertNodesDrawn(page, img, expect.pixelNodes);
    ok(page.url().includes("group=archdomain") && page.url().includes("level=2") && page.url().includes("split=1"), `grouping not in the URL: ${page.url()}`);
    eq(st.renderer, "webgl", "renderer asked for in the URL");
  });

  await step("traffic influence changes the layout", async () => {
    await open(page, base, "group=none");
    const before = await page.evaluate(() => window.__trafficmap.nodeIds().map((id) => window.__trafficmap.node(id)));
    await page.locator("#influence").fill("3");
    await page.locator("#influence").dispatchEvent("change");
    await ready(page);
    eq((await page.evaluate(() => window.__trafficmap.state())).influence, 3, "influence in the state");
    const after = await page.evaluate(() => window.__trafficmap.nodeIds().map((id) => window.__trafficmap.node(id)));
    const moved = after.filter((p, i) => Math.hypot(p.x - before[i].x, p.y - before[i].y) > 2).length;
    ok(moved > after.length / 2, `only ${moved} of ${after.length} nodes moved when traffic influence went from 1 to 3`);
  });

  // issue 11: the workloads view is selectable like the others (the golden reports hold no
  // containers: its nodes are the hosts and peers, exactly as many as its map has).
  for (const [view, label] of [["clusters", "Clusters"], ["security-groups", "Security groups"], ["workloads", "Workloads"], ["instances", "Instances"]]) {
    await step(`view ${view}`, async () => {
      if (view === "clusters") await open(page, base);
      await page.getByRole("radio", { name: label, exact: true }).click();
      const st = await ready(page);
      const doc = mapOf(view, newest);
      eq(st.nodes, doc.nodes.length, `${view} nodes drawn`);
      eq(st.edges, drawnLinks(doc), `${view} links drawn`);
      eq((await page.evaluate(() => window.__trafficmap.state())).view, view, "view in the state");
      const img = await shot(page, `04-view-${view}`);
      await assertNodesDrawn(page, img, doc.nodes.slice(0, 4).map((n) => n.id));
    });
  }

  await step("filters: env checkbox, archdomain regex, min bytes", async () => {
    await open(page, base);
    const doc = mapOf("instances", newest);
    const env = expect.envToHide;
    await page.locator(`#env-list input[data-env="${env}"]`).uncheck();
    let st = await ready(page);
    let want = expectedAfterFilters(doc, { hideEnv: [env] });
    eq([st.nodes, st.edges, st.suppressed], [want.nodes, want.links, want.suppressed], `nodes, links, suppressed without env ${env}`);
    await page.locator(`#env-list input[data-env="${env}"]`).check();
    await ready(page);
    await page.locator("#arch-re").fill(expect.archRegex);
    await page.locator("#arch-re").press("Enter");
    await page.locator("#arch-re").blur();
    st = await ready(page);
    want = expectedAfterFilters(doc, { archRe: expect.archRegex });
    eq([st.nodes, st.edges, st.suppressed], [want.nodes, want.links, want.suppressed], `nodes, links, suppressed with archdomain regex ${expect.archRegex}`);
    await shot(page, "05-filter-archdomain-regex");
    await page.locator("#arch-re").fill("");
    await page.locator("#arch-re").blur();
    await ready(page);
    await page.locator("#min-bytes").fill("1 GB");
    await page.locator("#min-bytes").blur();
    st = await ready(page);
    want = expectedAfterFilters(doc, { minBytes: 1e9 });
    eq([st.nodes, st.edges], [want.nodes, want.links], "nodes and links with min bytes 1 GB");
    ok(page.url().includes("min=1000000000"), `min bytes not in the URL: ${page.url()}`);
    await page.locator("#arch-re").fill("([");
    await page.locator("#arch-re").blur();
    eq(await page.locator("#arch-re").getAttribute("aria-invalid"), "true", "an invalid regular expression is flagged");
    // Suppressing a prefix in the archdomain tree hides everything under it.
    await open(page, base);
    await page.locator(`#arch-list input[data-arch="${expect.archPrefixToHide}"]`).uncheck();
    st = await ready(page);
    want = expectedAfterFilters(doc, { archRe: `^${expect.archPrefixToHide}(/|$)` });
    eq([st.nodes, st.edges], [want.nodes, want.links], `nodes and links without archdomain ${expect.archPrefixToHide}`);
  });

  await step("search: host, service, address; highlight with neighbours; keyboard", async () => {
    await open(page, base);
    await page.locator("#map").focus();
    await page.keyboard.press("/");
    ok(await page.evaluate(() => document.activeElement.id === "search"), "/ focuses the search box");
    for (const [q, ids, neighbourhood] of expect.searches) {
      await page.locator("#search").fill(q);
      await page.waitForFunction((want) => window.__trafficmap.state().q === want, q);
      const st = await page.evaluate(() => window.__trafficmap.stats());
      eq(st.searchHits, [...ids].sort(), `hits for "${q}"`);
      eq(st.highlighted, neighbourhood, `highlighted nodes (hits and neighbours) for "${q}"`);
      eq(await page.locator("#search-results li[role=option]").count(), ids.length, `result list for "${q}"`);
    }
    await shot(page, "06-search");
    // A dimmed node is drawn grey, a hit keeps its colour.
    const [q, ids] = expect.searches[0];
    await page.locator("#search").fill(q);
    await page.waitForFunction((want) => window.__trafficmap.state().q === want, q);
    const far = expect.notNeighbourOf[q];
    const dim = await page.evaluate((id) => window.__trafficmap.node(id).color, far);
    eq(dim, "#dde1e7", `colour of ${far}, not a neighbour of the hits`);
    await page.keyboard.press("ArrowDown");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => !document.querySelector("#details").hidden);
    eq((await page.evaluate(() => window.__trafficmap.state())).sel, ids[0], "Enter on the first result selects it");
    await page.keyboard.press("Escape");
    await page.locator("#map").focus();
    await page.keyboard.press("Escape");
    await page.waitForFunction(() => document.querySelector("#details").hidden);
    await page.keyboard.press("Escape");
    await page.waitForFunction(() => window.__trafficmap.state().q === "");
  });

  await step("details: hover tooltip, click a node, exact panel contents, peers", async () => {
    await open(page, base);
    const d = expect.details;
    const at = await pointAtNode(page, d.id, d.label);
    await page.mouse.click(at.x, at.y);
    await page.waitForSelector("#details:not([hidden])");
    eq((await page.locator("#details h2").textContent()).trim(), d.label, "panel title");
    const fields = await page.$$eval("#details dd[data-field]", (dds) => Object.fromEntries(dds.map((x) => [x.dataset.field, x.textContent.trim()])));
    eq(fields, d.fields, "panel fields");
    const rows = await page.$$eval("#details table.peers tbody tr", (trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent.trim())));
    eq(rows, d.peers, "peers table");
    for (const sel of ["#details", "#status", "#legend", "#tooltip"]) {
      const text = await page.locator(sel).textContent();
      ok(!/\b(null|undefined|NaN)\b/.test(text), `${sel} shows a missing value: ${text}`);
    }
    const st = await page.evaluate(() => window.__trafficmap.stats());
    eq(st.marked, [d.id], "selection marked on the map");
    ok(page.url().includes(`sel=${encodeURIComponent(d.id)}`), `selection not in the URL: ${page.url()}`);
    await shot(page, "07-details");
    await page.keyboard.press("Escape");
    await clickLink(page, expect.link);
    await shot(page, "07b-link-details");
    await page.keyboard.press("Escape");
    await page.waitForFunction(() => document.querySelector("#details").hidden);
    // The map is wider again without the panel: find the node anew once it is redrawn.
    const at2 = await pointAtNode(page, d.id, d.label);
    await page.mouse.click(at2.x, at2.y);
    await page.waitForSelector("#details:not([hidden])");
    // A peer in the table selects that peer.
    await page.locator("#details table.peers button.peer").first().click();
    await page.waitForFunction((id) => window.__trafficmap.state().sel !== id, d.id);
    eq((await page.locator("#details h2").textContent()).trim(), d.peers[0][0], "clicking a peer opens it");
  });

  await step("day picker: previous day, next day, keyboard [ and ]", async () => {
    await open(page, base);
    await page.selectOption("#day", previous);
    let st = await ready(page);
    eq(st.nodes, mapOf("instances", previous).nodes.length, `nodes on ${previous}`);
    ok(page.url().includes(`day=${previous}`), `day not in the URL: ${page.url()}`);
    await shot(page, "08-previous-day");
    await page.locator("#map").focus();
    await page.keyboard.press("]");
    await page.waitForFunction((d) => window.__trafficmap.state().day === d, newest);
    st = await ready(page);
    eq(st.nodes, mapOf("instances", newest).nodes.length, `nodes on ${newest}`);
    await page.locator("#prev-day").click();
    await page.waitForFunction((d) => window.__trafficmap.state().day === d, previous);
    await ready(page);
    await page.goBack();
    await page.waitForFunction((d) => window.__trafficmap.state().day === d, newest);
    await ready(page);
  });

  await step("diff of two days: new, gone, changed links", async () => {
    await open(page, base);
    await page.selectOption("#mode", "diff");
    await ready(page);
    await page.selectOption("#base", previous);
    const st = await ready(page);
    const want = expectedDiff(mapOf("instances", previous), mapOf("instances", newest));
    eq(st.diff, want, "diff counts");
    eq((await page.locator("#diff-counts").textContent()).trim(), `links: ${want.new} new · ${want.gone} gone · ${want.changed} changed`, "diff counts in the status line");
    await shot(page, "09-diff");
    await page.locator("#changes").check();
    const st2 = await ready(page);
    eq(st2.edges, expectedChangedDrawn(mapOf("instances", previous), mapOf("instances", newest)), "links drawn with only changes");
    await shot(page, "10-diff-only-changes");
  });

  await step("time range", async () => {
    await open(page, base, `mode=range&from=${previous}T00:00&to=${newest}T00:00`);
    const st = await ready(page);
    eq(st.nodes, mapOf("instances", previous).nodes.length, "nodes over the range covering the previous day");
    // Two days: the union of both days' nodes.
    await page.locator("#to").fill(`${addDay(newest)}T00:00`);
    await page.locator("#apply-range").click();
    await page.waitForFunction((t) => window.__trafficmap.state().to === t, `${addDay(newest)}T00:00`);
    const two = await ready(page);
    const union = new Set([...mapOf("instances", previous).nodes, ...mapOf("instances", newest).nodes].map((n) => n.id));
    eq(two.nodes, union.size, "nodes over two days (both days' nodes)");
    await shot(page, "11a-range-two-days");
    await page.locator("#to").fill(`${newest}T00:00`);
    await page.locator("#from").fill(`${newest}T00:00`);
    await page.locator("#apply-range").click();
    await page.waitForSelector("#banner:not([hidden])");
    await shot(page, "11-range");
  });

  await step("export: PNG and SVG downloads, CSV and DOT links", async () => {
    await open(page, base, "view=clusters");
    const [png] = await Promise.all([page.waitForEvent("download"), page.locator("#export-png").click()]);
    const pngPath = join(artifacts, png.suggestedFilename());
    await png.saveAs(pngPath);
    eq(png.suggestedFilename(), `trafficmap-clusters-${newest}.png`, "PNG file name");
    const img = PNG.sync.read(readFileSync(pngPath));
    const dims = await page.locator("#map").boundingBox();
    eq([img.width, img.height], [Math.round(dims.width) * 2, Math.round(dims.height) * 2], "PNG size (2x the map)");
    const doc = mapOf("clusters", newest);
    let st = await page.evaluate(() => window.__trafficmap.stats());
    eq(st.lastExport.nodes, doc.nodes.length, "nodes painted into the PNG");
    const [svg] = await Promise.all([page.waitForEvent("download"), page.locator("#export-svg").click()]);
    const svgPath = join(artifacts, svg.suggestedFilename());
    await svg.saveAs(svgPath);
    const text = readFileSync(svgPath, "utf8");
    ok(text.startsWith("<?xml") && text.includes("<svg"), "SVG document");
    eq((text.match(/<circle /g) ?? []).length, doc.nodes.length, "circles in the SVG");
    st = await page.evaluate(() => window.__trafficmap.stats());
    eq(st.lastExport.edges, drawnLinks(doc), "links painted into the SVG");
    for (const fmt of ["csv", "dot"]) {
      const href = await page.locator(`#export-${fmt}`).getAttribute("href");
      eq(href, `/api/v1/maps/export?view=clusters&day=${newest}&format=${fmt}`, `${fmt} link`);
      const r = await page.request.get(`${base}${href}`);
      eq(r.status(), 200, `${fmt} export status`);
      const body = await r.text();
      writeFileSync(join(artifacts, `export.${fmt}`), body);
      if (fmt === "csv") {
        // LucidChart rows: a shape per node, then a line per link.
        eq((body.match(/^\d+,[^,\n]*,Flowchart Shapes,/gm) ?? []).length, doc.nodes.length, "CSV shape rows");
        eq((body.match(/^\d+,Line,/gm) ?? []).length, doc.links.length, "CSV line rows");
      } else {
        ok(body.startsWith("digraph"), "DOT export is a digraph");
        eq((body.match(/ -> .*penwidth=/g) ?? []).length, doc.links.length, "DOT edges");
      }
    }
  });

  await step("the URL restores the whole view", async () => {
    const d = expect.details;
    const q = `view=instances&mode=diff&day=${newest}&base=${previous}&group=archdomain&level=2&split=1&influence=2&hideEnv=${expect.envToHide}&q=${encodeURIComponent(expect.searches[0][0])}&sel=${encodeURIComponent(d.id)}&color=archdomain&edges=cost`;
    const st = await open(page, base, q);
    const s = await page.evaluate(() => window.__trafficmap.state());
    eq([s.view, s.mode, s.day, s.base, s.group, s.level, s.split, s.influence, s.hideEnv, s.sel, s.color, s.edges], ["instances", "diff", newest, previous, "archdomain", 2, true, 2, [expect.envToHide], d.id, "archdomain", "cost"], "state from the URL");
    eq([await page.locator("#mode").inputValue(), await page.locator("#day").inputValue(), await page.locator("#base").inputValue()], ["diff", newest, previous], "time controls");
    eq(await page.locator('input[name="group"]:checked').getAttribute("value"), "archdomain", "grouping control");
    eq(await page.locator("#color").inputValue(), "archdomain", "colour control");
    eq(await page.locator(`#env-list input[data-env="${expect.envToHide}"]`).isChecked(), false, "env checkbox");
    eq((await page.locator("#details h2").textContent()).trim(), d.label, "selected node's panel");
    eq(st.marked, [d.id], "selection marked");
    await shot(page, "12-from-url");
  });

  await step("mouse: drag pans, wheel zooms, a drag keeps the selection", async () => {
    const d = expect.details;
    await open(page, base, `sel=${encodeURIComponent(d.id)}`);
    const box = await page.locator("#map").boundingBox();
    const c0 = await page.evaluate(() => window.__trafficmap.camera());
    await page.mouse.move(box.x + 40, box.y + box.height - 40);
    await page.mouse.down();
    for (let i = 1; i <= 10; i++) await page.mouse.move(box.x + 40 + 20 * i, box.y + box.height - 40 - 10 * i);
    await page.mouse.up();
    await page.waitForFunction(() => !window.__trafficmap.camera().moving);
    const c1 = await page.evaluate(() => window.__trafficmap.camera());
    ok(c1.x < c0.x && c1.y < c0.y && c1.ratio === c0.ratio, `dragging right and up moves the camera left and down: ${JSON.stringify([c0, c1])}`);
    eq((await page.evaluate(() => window.__trafficmap.state())).sel, d.id, "selection after a drag");
    eq(await page.locator("#map-view").evaluate((el) => el.style.transform), "", "no bitmap transform left after the motion");
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    for (let i = 0; i < 5; i++) await page.mouse.wheel(0, -100);
    await page.waitForFunction(() => !window.__trafficmap.camera().moving);
    const c2 = await page.evaluate(() => window.__trafficmap.camera());
    ok(c2.ratio < c1.ratio * 0.5, `wheel zooms in: ratio ${c1.ratio} -> ${c2.ratio}`);
    await shot(page, "12b-after-drag-and-wheel");
  });

  // ---------------------------------------------------------------- parity with the old tool (issue 12)

  /** Every drawn node's viewport and graph position. */
  const positions = () => page.evaluate(() => window.__trafficmap.nodeIds().map((id) => ({ id, ...window.__trafficmap.node(id) })));

  await step("layout: pause stops it where the nodes are, resume runs it again", async () => {
    await open(page, base, "group=none");
    eq((await page.locator("#pause-layout").textContent()).trim(), "Resume layout", "button once the layout settled");
    // A new layout (influence 3) starts and is paused in the same task: no progress can land.
    const state = await page.evaluate(() => {
      const el = document.querySelector("#influence");
      el.value = "3";
      el.dispatchEvent(new Event("change"));
      const running = window.__trafficmap.layout.state;
      document.querySelector("#pause-layout").click();
      return [running, window.__trafficmap.layout.state, document.querySelector("#pause-layout").textContent];
    });
    eq(state, ["running", "paused", "Resume layout"], "layout state before and after Pause, button text");
    const paused = await positions();
    await page.waitForTimeout(800);
    eq(await positions(), paused, "positions 0.8 s after the pause");
    ok((await page.locator("#status").textContent()).includes("layout paused after 0 iterations"), "status line says paused");
    await page.locator("#pause-layout").click();
    await ready(page);
    const after = await positions();
    const moved = after.filter((p, i) => Math.hypot(p.x - paused[i].x, p.y - paused[i].y) > 2).length;
    ok(moved > after.length / 2, `only ${moved} of ${after.length} nodes moved when the paused layout resumed`);
    // The keyboard does the same: p pauses a running layout.
    await page.evaluate(() => {
      const el = document.querySelector("#influence");
      el.value = "2";
      el.dispatchEvent(new Event("change"));
      document.querySelector("#map").dispatchEvent(new KeyboardEvent("keydown", { key: "p", bubbles: true }));
    });
    eq(await page.evaluate(() => window.__trafficmap.layout.state), "paused", "p pauses");
  });

  await step("drag a node to pin it (marked, in the URL, kept by the layout); double-click releases it", async () => {
    await open(page, base, "group=none");
    const all = await positions();
    const xs = all.map((n) => n.x), ys = all.map((n) => n.y);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    // The most interior node, moved towards the middle: the map's framing stays as it is.
    const inner = (n) => Math.min(n.x - x0, x1 - n.x, n.y - y0, y1 - n.y);
    const n = all.reduce((a, b) => (inner(b) > inner(a) ? b : a));
    ok(inner(n) > 10, `no interior node to drag (best ${inner(n)} px from the edge)`);
    const mid = { x: (x0 + x1) / 2, y: (y0 + y1) / 2 };
    const d = Math.hypot(mid.x - n.x, mid.y - n.y) || 1;
    const px = Math.min(25, inner(n) - 5);
    // Towards the middle, or to the right when the node is the middle.
    const [ux, uy] = d > 1 ? [(mid.x - n.x) / d, (mid.y - n.y) / d] : [1, 0];
    const to = { x: n.x + ux * px, y: n.y + uy * px };
    const box = await page.locator("#map").boundingBox();
    await page.mouse.move(box.x + n.x, box.y + n.y);
    await page.mouse.down();
    for (let i = 1; i <= 8; i++) await page.mouse.move(box.x + n.x + ((to.x - n.x) * i) / 8, box.y + n.y + ((to.y - n.y) * i) / 8);
    await page.mouse.up();
    await frames(page);
    const p = await page.evaluate((id) => window.__trafficmap.node(id), n.id);
    ok(Math.hypot(p.x - to.x, p.y - to.y) < 1.5, `the node is at (${p.x}, ${p.y}), not where it was dropped (${to.x}, ${to.y})`);
    eq([p.pinned, p.borderColor], [true, "#6d28d9"], "pinned and marked");
    eq((await page.evaluate(() => window.__trafficmap.state())).pins, [[n.id, p.gx, p.gy]], "pins in the state");
    eq(new URL(page.url()).searchParams.getAll("pin"), [`${n.id}@${p.gx},${p.gy}`], "pin in the URL");
    eq((await page.evaluate(() => window.__trafficmap.camera())).ratio, 1, "the drag moved the node, not the camera");
    const others = all.filter((o) => o.id !== n.id);
    eq((await positions()).filter((o) => o.id !== n.id).map((o) => [o.gx, o.gy]), others.map((o) => [o.gx, o.gy]), "other nodes did not move");
    // The layout runs again around it; the pinned node stays.
    await page.locator("#pause-layout").click();
    await ready(page);
    const q = await page.evaluate((id) => window.__trafficmap.node(id), n.id);
    eq([q.gx, q.gy], [p.gx, p.gy], "pinned node after the layout ran again");
    await shot(page, "14-pinned");
    // A shared link puts it there again.
    await page.goto(page.url());
    await ready(page);
    const r = await page.evaluate((id) => window.__trafficmap.node(id), n.id);
    eq([r.gx, r.gy, r.pinned], [p.gx, p.gy, true], "pinned node from the URL");
    await page.mouse.dblclick(box.x + r.x, box.y + r.y);
    await page.waitForFunction(() => window.__trafficmap.state().pins.length === 0);
    eq(new URL(page.url()).searchParams.getAll("pin"), [], "no pin in the URL after the double-click");
    const u = await page.evaluate((id) => window.__trafficmap.node(id), n.id);
    ok(!u.pinned && u.borderColor !== "#6d28d9", `released node still marked: ${JSON.stringify(u)}`);
  });

  await step("suppression of external addresses by name; hide suppressed nodes too, or only their links", async () => {
    const doc = mapOf("instances", newest);
    const external = doc.nodes.filter((n) => n.kind === "external").map((n) => n.id);
    ok(external.length > 0, "the map has external addresses");
    await open(page, base, "envRe=%5Eexternal%24");
    let st = await ready(page);
    let want = expectedVisible(doc, { envRe: "^external$" });
    eq([st.nodes, st.edges, st.suppressed], [want.nodes, want.links, want.suppressed], "^external$ with nodes hidden");
    eq(want.suppressed, external.length, "every external address suppressed");
    eq(await page.locator("#hide-nodes").isChecked(), true, "hide nodes is on by default");
    await page.locator("#hide-nodes").uncheck();
    st = await ready(page);
    want = expectedVisible(doc, { envRe: "^external$", hideNodes: false });
    eq([st.nodes, st.edges, st.suppressed], [want.nodes, want.links, want.suppressed], "^external$ with only links hidden");
    ok(want.nodes > expectedVisible(doc, { envRe: "^external$" }).nodes, "the toggle changes what is shown");
    ok(new URL(page.url()).searchParams.get("hideNodes") === "0", `hideNodes not in the URL: ${page.url()}`);
    eq((await page.locator("#filter-summary").textContent()).trim(), `${external.length} node(s) suppressed (links hidden, nodes shown)`, "filter summary");
    await assertNodesDrawn(page, await shot(page, "15-external-links-hidden"), external.slice(0, 2));
  });

  await step("suppression presets from the collector's [viewer] configuration", async () => {
    const doc = mapOf("instances", newest);
    await open(page, base);
    eq(await page.locator("#preset option").allTextContents(), ["—", "No external addresses", "Monitoring links"], "preset options");
    await page.selectOption("#preset", { label: "Monitoring links" });
    let st = await ready(page);
    let s = await page.evaluate(() => window.__trafficmap.state());
    eq([s.envRe, s.archRe, s.hideNodes], ["", expect.archRegex, false], "state from the preset");
    let want = expectedVisible(doc, { archRe: expect.archRegex, hideNodes: false });
    eq([st.nodes, st.edges, st.suppressed], [want.nodes, want.links, want.suppressed], "nodes and links with the preset");
    eq(await page.locator("#arch-re").inputValue(), expect.archRegex, "the regex box shows the preset's pattern");
    await page.selectOption("#preset", { label: "No external addresses" });
    st = await ready(page);
    want = expectedVisible(doc, { envRe: "^external$" });
    eq([st.nodes, st.edges, st.suppressed], [want.nodes, want.links, want.suppressed], "nodes and links with the other preset");
    // A URL with the same suppressions shows that preset as chosen.
    await open(page, base, `archRe=${encodeURIComponent(expect.archRegex)}&hideNodes=0`);
    eq(await page.locator("#preset").inputValue(), "1", "preset recognised from the URL");
    await page.selectOption("#preset", "");
    st = await ready(page);
    s = await page.evaluate(() => window.__trafficmap.state());
    eq([s.envRe, s.archRe, s.hideNodes, st.nodes], ["", "", true, doc.nodes.length], "no preset: nothing suppressed");
  });

  await step("node size by price; nodes without a price are smallest, and the legend says so", async () => {
    const doc = mapOf("instances", newest);
    await open(page, base, "size=price");
    const shrink = await page.evaluate(() => window.__trafficmap.nodeSizeShrink);
    const prices = doc.nodes.map((n) => (n.price_per_hour > 0 ? n.price_per_hour : null));
    const top = Math.max(...prices.filter((p) => p !== null));
    const unpriced = prices.filter((p) => p === null).length;
    ok(unpriced > 0 && unpriced < doc.nodes.length, "the map has nodes with and without a price");
    for (const [i, n] of doc.nodes.entries()) {
      const got = (await page.evaluate((id) => window.__trafficmap.node(id), n.id)).size;
      const want = Math.max(1.2, (3 + 15 * (prices[i] === null ? 0 : Math.sqrt(prices[i] / top))) * shrink);
      ok(Math.abs(got - want) < 1e-9, `${n.id} (price ${prices[i]}): size ${got}, expected ${want}`);
    }
    eq((await page.locator("#legend-size").textContent()).trim(), "Size: price per hour; width: bytes (log scale)", "legend heading");
    eq((await page.locator("#legend-unpriced").textContent()).trim(), `no price: smallest size (${unpriced} nodes)`, "legend for nodes without a price");
    eq(await page.locator("#size-by").inputValue(), "price", "size control");
    await page.selectOption("#size-by", "bytes");
    await page.waitForFunction(() => window.__trafficmap.state().sizeBy === "bytes");
    ok(!new URL(page.url()).searchParams.has("size"), "bytes is the default, left out of the URL");
    eq(await page.locator("#legend-unpriced").count(), 0, "no price note when sized by bytes");
  });

  await step("exports follow the screen: LucidChart CSV, draw.io CSV and DOT of the nodes and links shown; or the whole map", async () => {
    const doc = mapOf("instances", newest);
    const env = expect.envToHide;
    await open(page, base, `hideEnv=${env}&envRe=%5Eexternal%24&hideNodes=0`);
    const want = expectedVisible(doc, { hideEnv: [env], envRe: "^external$", hideNodes: false });
    const sent = await page.evaluate(() => window.__trafficmap.subset());
    const sorted = (xs) => xs.map((x) => JSON.stringify(x)).sort();
    eq([sorted(sent.nodes), sorted(sent.links)], [sorted(want.ids), sorted(want.pairs)], "the subset the viewer sends");
    eq(await page.locator("#export-scope").inputValue(), "screen", "exports cover the screen by default");
    const day = newest.replaceAll("-", "");
    for (const [id, fmt, name] of [["csv", "csv", `instances-${day}.csv`], ["drawio", "drawio", `instances-${day}.drawio.csv`], ["dot", "dot", `instances-${day}.dot`]]) {
      const [dl] = await Promise.all([page.waitForEvent("download"), page.locator(`#export-${id}`).click()]);
      eq(dl.suggestedFilename(), name, `${fmt} file name`);
      const path = join(artifacts, `screen-${dl.suggestedFilename()}`);
      await dl.saveAs(path);
      const body = readFileSync(path, "utf8");
      // The collector's export of the expected subset, asked for here: byte for byte the same.
      const r = await page.request.post(`${base}/api/v1/maps/export?view=instances&day=${newest}&format=${fmt}`, { data: { nodes: want.ids, links: want.pairs } });
      eq(r.status(), 200, `${fmt} subset export status`);
      eq(body, await r.text(), `${fmt} download`);
      const whole = await (await page.request.get(`${base}/api/v1/maps/export?view=instances&day=${newest}&format=${fmt}`)).text();
      ok(body !== whole, `${fmt}: the screen's export equals the whole map's`);
      if (fmt === "csv") {
        eq((body.match(/^\d+,[^,\n]*,Flowchart Shapes,/gm) ?? []).length, want.ids.length, "CSV shape rows");
        eq((body.match(/^\d+,Line,/gm) ?? []).length, doc.links.filter((l) => want.pairs.some(([a, b]) => a === l.source && b === l.target)).length, "CSV line rows");
      } else if (fmt === "drawio") {
        const rows = body.split("\n").filter((l) => l && !l.startsWith("#")).slice(1);
        eq(rows.map((l) => l.split(",")[0]).sort(), [...want.ids].sort(), "draw.io rows, one per node shown");
      } else {
        eq((body.match(/ -> .*penwidth=/g) ?? []).length, doc.links.filter((l) => want.pairs.some(([a, b]) => a === l.source && b === l.target)).length, "DOT edges");
      }
    }
    await page.selectOption("#export-scope", "all");
    const [dl] = await Promise.all([page.waitForEvent("download"), page.locator("#export-drawio").click()]);
    const path = join(artifacts, `whole-${dl.suggestedFilename()}`);
    await dl.saveAs(path);
    eq(readFileSync(path, "utf8"), await (await page.request.get(`${base}/api/v1/maps/export?view=instances&day=${newest}&format=drawio`)).text(), "whole-map draw.io download");
  });

  await step("keyboard: views, zoom, grouping, help, focusable controls", async () => {
    await open(page, base);
    await page.locator("#map").focus();
    await page.keyboard.press("2");
    await page.waitForFunction(() => window.__trafficmap.state().view === "clusters");
    await ready(page);
    const r0 = await page.evaluate(() => window.__trafficmap.stats().nodesInView);
    await page.keyboard.press("+");
    await page.keyboard.press("+");
    await page.keyboard.press("+");
    await page.waitForTimeout(700);
    const r1 = await page.evaluate(() => window.__trafficmap.stats().nodesInView);
    ok(r1 < r0, `zooming in with + keeps ${r1} of ${r0} nodes in view`);
    await page.keyboard.press("0");
    await page.waitForTimeout(500);
    eq(await page.evaluate(() => window.__trafficmap.stats().nodesInView), r0, "0 shows the whole map again");
    await page.keyboard.press("g");
    await page.waitForFunction(() => window.__trafficmap.state().group === "archdomain");
    await page.keyboard.press("?");
    await page.waitForSelector("#help:not([hidden])");
    await page.keyboard.press("Escape");
    await page.waitForSelector("#help", { state: "hidden" });
    // Tab reaches the controls in order, each showing where the focus is.
    const seen = [];
    await page.locator("#help-button").focus();
    for (let i = 0; i < 6; i++) {
      await page.keyboard.press("Tab");
      seen.push(await page.evaluate(() => document.activeElement.id || document.activeElement.name || document.activeElement.textContent.trim()));
    }
    ok(seen.includes("group"), `Tab did not reach the grouping control: ${seen.join(", ")}`);
  });

  // ---- issue 14 items 2 and 3 (v14-links): bundles, semantic zoom, top N, focus ----
  // Bundles and top N are recomputed here from the map files by the documented rules
  // (docs/architecture-viewer.md): one bundle per pair of distinct groups, both directions, its
  // count the links between them and its bytes their summed bytes; the N biggest links stay.
  await step("links aggregate: bundles between groups with exact sums, inner links faded, zoom in expands", async () => {
    const doc = mapOf("instances", newest);
    let st = await open(page, base, "bundle=on");
    eq(st.collapsed, true, "collapsed at the whole-map zoom");
    const want = expectedBundles(doc, envGroupOf);
    eq(sortBundles(await page.evaluate(() => window.__trafficmap.bundles())), want, "bundles (groups, count, bytes)");
    eq(st.linksBundled, want.reduce((a, b) => a + b.count, 0), "links standing in bundles");
    const inner = innerPairs(doc, envGroupOf);
    eq((await page.evaluate(() => window.__trafficmap.edgesShown())).length, inner, "links drawn: only those inside a group");
    eq((await page.evaluate(() => window.__trafficmap.edgesFaded())).length, inner, "links inside a collapsed group faded");
    eq((await page.locator("#bundle-status").textContent()).trim(), `${st.linksBundled} links in ${want.length} bundle${want.length === 1 ? "" : "s"}`, "status line");
    await shot(page, "v14-links-bundles-golden");
    // The exports of the screen still send the real links.
    eq((await page.evaluate(() => window.__trafficmap.subset())).links.length, expectedVisible(doc, {}).pairs.length, "links in the export of the screen");
    // Hovering a bundle lists its biggest links, biggest first.
    const seg = (await page.evaluate(() => window.__trafficmap.bundleSegments())).sort((a, b) => Math.hypot(b.bx - b.ax, b.by - b.ay) - Math.hypot(a.bx - a.ax, a.by - a.ay))[0];
    const at = await clearPointOn(page, seg);
    const box = await page.locator("#map").boundingBox();
    await page.mouse.move(box.x + at.x, box.y + at.y);
    await page.waitForSelector("#tooltip:not([hidden]) .bundle-link");
    const rows = await page.$$eval("#tooltip .bundle-link", (xs) => xs.map((x) => x.textContent));
    eq(rows.map((r) => r.split(" · ")[0]), bundleTop(doc, envGroupOf, seg.source, seg.target).map((l) => `${labelOf(doc, l.source)} → ${labelOf(doc, l.target)}`), "bundle tooltip: its biggest links");
    await page.mouse.move(box.x + 2, box.y + 2);
    // Zooming in past the threshold expands every group; zooming out bundles again.
    await page.evaluate(() => window.__trafficmap.zoom(2, 0));
    await page.waitForFunction(() => window.__trafficmap.stats().collapsed === false);
    st = await page.evaluate(() => window.__trafficmap.stats());
    eq([st.linksBundled, st.linksFaded, (await page.evaluate(() => window.__trafficmap.bundles())).length], [0, 0, 0], "zoomed in: no bundles, nothing faded");
    eq((await page.evaluate(() => window.__trafficmap.edgesShown())).length, drawnLinks(doc), "zoomed in: every link drawn");
    eq(await page.evaluate(() => window.__trafficmap.expanded("env:stage")), true, "zoomed in: groups expanded");
    await page.evaluate(() => window.__trafficmap.reset(0));
    await page.waitForFunction(() => window.__trafficmap.stats().collapsed === true);
    eq(sortBundles(await page.evaluate(() => window.__trafficmap.bundles())), want, "zoomed out again: the same bundles");
  });

  await step("selecting a group (a click on it) expands only it and fades exactly its non-neighbours", async () => {
    const doc = mapOf("instances", newest);
    await open(page, base, "bundle=on");
    const key = "env:prod";
    const at = await page.evaluate((k) => {
      const t = window.__trafficmap;
      const nodes = t.nodeIds().map((id) => t.node(id));
      const c = t.groupCentre(k);
      // The point inside the group's outline farthest from every node.
      let best = null;
      for (let dx = -120; dx <= 120; dx += 4) {
        for (let dy = -120; dy <= 120; dy += 4) {
          const p = { x: c.x + dx, y: c.y + dy };
          if (t.groupAt(p.x, p.y) !== k) continue;
          const clear = Math.min(...nodes.map((n) => Math.hypot(n.x - p.x, n.y - p.y) - n.r));
          if (!best || clear > best.clear) best = { ...p, clear };
        }
      }
      return best;
    }, key);
    ok(at && at.clear > 4, `no free point inside ${key}`);
    const box = await page.locator("#map").boundingBox();
    await page.mouse.click(box.x + at.x, box.y + at.y);
    await page.waitForFunction((k) => window.__trafficmap.state().gsel === k, key);
    const st = await page.evaluate(() => window.__trafficmap.stats());
    eq(st.expanded, [key], "only the selected group expanded");
    eq(await page.evaluate(() => [window.__trafficmap.expanded("env:prod"), window.__trafficmap.expanded("env:stage")]), [true, false], "expanded(key)");
    eq(sortBundles(await page.evaluate(() => window.__trafficmap.bundles())), expectedBundles(doc, envGroupOf, new Set([key])), "the other groups stay bundled");
    const members = doc.nodes.filter((n) => envGroupOf(n) === key).map((n) => n.id);
    await assertFocus(page, doc, members, "group focus");
    eq((await page.locator("#group-selected").textContent()).trim(), "group prod selected (Esc releases)", "status line");
    ok(new URL(page.url()).searchParams.get("gsel") === key, "the selected group is in the URL");
    await shot(page, "v14-links-group-selected");
    await page.keyboard.press("Escape");
    await page.waitForFunction(() => window.__trafficmap.state().gsel === null);
    eq((await page.evaluate(() => window.__trafficmap.stats())).expanded, [], "Escape releases the group");
    // A node selection highlights its peers and the links between them, and expands its group.
    await page.evaluate((id) => window.__trafficmap.select(id), expect.details.id);
    await assertFocus(page, doc, [expect.details.id], "node focus");
    eq((await page.evaluate(() => window.__trafficmap.stats())).expanded, [envGroupOf(doc.nodes.find((n) => n.id === expect.details.id))], "a selected node's group expanded");
  });

  await step("bundles follow filters and diff mode", async () => {
    const doc = mapOf("instances", newest);
    const hide = expect.envToHide;
    await open(page, base, `bundle=on&hideEnv=${hide}`);
    const keep = (l) => ![l.source, l.target].some((id) => doc.nodes.find((n) => n.id === id).env === hide);
    eq(sortBundles(await page.evaluate(() => window.__trafficmap.bundles())), expectedBundles(doc, envGroupOf, new Set(), keep), "bundles with an env hidden");
    await open(page, base, `bundle=on&mode=diff&day=${newest}&base=${previous}`);
    const before = mapOf("instances", previous);
    const afterKeys = new Set(doc.links.map((l) => `${l.source}>${l.target}`));
    const union = { nodes: [...before.nodes, ...doc.nodes], links: [...doc.links, ...before.links.filter((l) => !afterKeys.has(`${l.source}>${l.target}`))] };
    eq(sortBundles(await page.evaluate(() => window.__trafficmap.bundles())), expectedBundles(union, envGroupOf), "bundles of a diff (gone links with their earlier bytes)");
  });

  await step("top N links: exactly the N biggest drawn, the status line says what is hidden, show all", async () => {
    const doc = mapOf("instances", newest);
    const total = drawnLinks(doc);
    let st = await open(page, base, "top=4");
    eq([st.linksShown, st.linksHidden], [4, total - 4], "links shown and hidden");
    const shown = await page.evaluate(() => window.__trafficmap.edgesShown());
    eq(shown.length, 4, "links drawn");
    eq(shown.map((x) => JSON.stringify(x)).sort(), topPairs(doc, 4), "the four biggest links drawn");
    eq((await page.locator("#links-hidden").textContent()).trim(), `showing 4 of ${total} links; show all`, "status line");
    await page.click("#show-all-links");
    await page.waitForFunction(() => window.__trafficmap.stats().linksHidden === 0);
    st = await page.evaluate(() => window.__trafficmap.stats());
    eq([st.linksShown, (await page.evaluate(() => window.__trafficmap.edgesShown())).length], [total, total], "show all: every link");
    eq(new URL(page.url()).searchParams.get("top"), "all", "show all is in the URL");
    eq(await page.locator("#links-hidden").count(), 0, "nothing hidden, nothing said");
  });
  // ---- end issue 14 items 2 and 3 ----
} finally {
  await browser.close();
}

await step("canvas fallback where WebGL is missing", async () => {
  const b = await openBrowser(["--disable-webgl", "--disable-webgl2", "--disable-3d-apis"]);
  try {
    const p = await b.context.newPage();
    watch(p, base);
    const st = await open(p, base);
    const doc = mapOf("instances", newest);
    eq(st.renderer, "canvas", "renderer without WebGL");
    eq([st.nodes, st.edges], [doc.nodes.length, drawnLinks(doc)], "nodes and links in the graph");
    eq([st.canvasDrawn.nodes, st.canvasDrawn.edges], [doc.nodes.length, drawnLinks(doc)], "nodes and links painted on the canvas");
    const img = await shot(p, "13-canvas-fallback");
    await assertNodesDrawn(p, img, expect.pixelNodes);
    const d = expect.details;
    const n = await p.evaluate((id) => window.__trafficmap.node(id), d.id);
    const box = await p.locator("#map").boundingBox();
    await p.mouse.click(box.x + n.x, box.y + n.y);
    await p.waitForSelector("#details:not([hidden])");
    eq((await p.locator("#details h2").textContent()).trim(), d.label, "click selects on the canvas too");
    await p.keyboard.press("Escape");
    await clickLink(p, expect.link);
  } finally {
    await b.close();
  }
});

// ---- issue 14 items 2 and 3 (v14-links): the synthetic fleet of bench/synth.mjs (600 hosts,
// 3,000 links) served as a daily file by the mock API (the viewer is what is under test here),
// with the defaults: bundles (more than 300 links) and the top 500 links (more than 2,000).
await step("synthetic 600/3,000 fleet: top 500 by default, exact bundles, a selected group expands alone, zoom in expands all", async () => {
  const { synthMap } = await import("../bench/synth.mjs");
  const doc = synthMap(600, 3000, 1);
  const dir = mkdtempSync(join(tmpdir(), "trafficmap-e2e-synth-"));
  writeFileSync(join(dir, "instances-20261123.json"), JSON.stringify(doc));
  const { startServer } = await import("./server.mjs");
  const { server, url } = await startServer({ mapsDir: dir });
  const b = await openBrowser();
  try {
    const p = await b.context.newPage();
    watch(p, url);
    const byId = new Map(doc.nodes.map((n) => [n.id, n]));
    const top = new Set(topPairs(doc, 500));
    const inner = (l) => envGroupOf(byId.get(l.source)) === envGroupOf(byId.get(l.target));
    for (const renderer of ["canvas", "webgl"]) {
      await p.goto(`${url}/?renderer=${renderer}`);
      let st = await ready(p);
      eq([st.renderer, st.nodes, st.edges], [renderer, 600, 3000], `${renderer}: nodes and links in the graph`);
      eq([st.linksShown, st.linksHidden], [500, 2500], `${renderer}: top 500 of 3,000 links`);
      eq((await p.locator("#links-hidden").textContent()).trim(), "showing 500 of 3,000 links; show all", `${renderer}: status line`);
      eq(st.collapsed, true, `${renderer}: bundled at the whole-map zoom`);
      const want = expectedBundles(doc, envGroupOf);
      eq(sortBundles(await p.evaluate(() => window.__trafficmap.bundles())), want, `${renderer}: bundles`);
      eq(st.linksBundled, want.reduce((a, x) => a + x.count, 0), `${renderer}: links in bundles`);
      // Drawn: the top 500 that lie inside one group (the others are in bundles), faded.
      const shownInner = doc.links.filter((l) => top.has(JSON.stringify([l.source, l.target])) && inner(l)).length;
      eq((await p.evaluate(() => window.__trafficmap.edgesShown())).length, shownInner, `${renderer}: links drawn`);
      if (renderer === "canvas") eq(st.canvasDrawn.edges, shownInner, "links painted on the canvas");
      await shot(p, `v14-links-synth-${renderer}`);
    }
    // A selected group expands alone; its neighbourhood is highlighted, exactly.
    await p.evaluate(() => window.__trafficmap.selectGroup("env:stage"));
    let st = await p.evaluate(() => window.__trafficmap.stats());
    eq(st.expanded, ["env:stage"], "only the selected group expanded");
    eq(sortBundles(await p.evaluate(() => window.__trafficmap.bundles())), expectedBundles(doc, envGroupOf, new Set(["env:stage"])), "the other groups stay bundled");
    await assertFocus(p, doc, doc.nodes.filter((n) => envGroupOf(n) === "env:stage").map((n) => n.id), "group focus");
    await shot(p, "v14-links-synth-group-selected");
    await p.evaluate(() => window.__trafficmap.selectGroup(null));
    // Show all, then zoom in: no bundles, every link.
    await p.click("#show-all-links");
    await p.waitForFunction(() => window.__trafficmap.stats().linksHidden === 0);
    await p.evaluate(() => window.__trafficmap.zoom(2, 0));
    await p.waitForFunction(() => window.__trafficmap.stats().collapsed === false);
    st = await p.evaluate(() => window.__trafficmap.stats());
    eq([st.linksShown, st.linksBundled, (await p.evaluate(() => window.__trafficmap.edgesShown())).length], [3000, 0, 3000], "zoomed in with show all: every link, no bundle");
    eq(new URL(p.url()).searchParams.get("top"), "all", "show all is in the URL");
  } finally {
    await b.close();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
// ---- end issue 14 items 2 and 3 ----

// A collector that wants a read token: the viewer asks for one (a form), keeps it for the tab,
// sends it with every read and export, and forgets it on request.
if (collectorBin) {
  await step("read token: asked for on 401, kept for the tab, sent with reads and exports", async () => {
    const READ_TOKEN = "e2e-read-token-0123456789";
    const port = await freePort();
    const out = mkdtempSync(join(tmpdir(), "trafficmap-e2e-auth-"));
    for (const f of files) cpSync(join(mapsDir, f), join(out, f));
    const data = mkdtempSync(join(tmpdir(), "trafficmap-e2e-auth-data-"));
    const tokenFile = join(data, "read-tokens");
    writeFileSync(tokenFile, `${READ_TOKEN} e2e\n`);
    const log = [];
    const child = spawn(resolve(collectorBin), ["serve", "--listen", `127.0.0.1:${port}`, "--output-dir", out, "--data-dir", data, "--no-dns", "--read-token-file", tokenFile], { stdio: ["ignore", "pipe", "pipe"] });
    process.on("exit", () => child.kill("SIGKILL"));
    child.stdout.on("data", (d) => log.push(d.toString()));
    child.stderr.on("data", (d) => log.push(d.toString()));
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 30000;
    for (;;) {
      try {
        if ((await fetch(`${url}/healthz`)).ok) break;
      } catch {
        // not listening yet
      }
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the collector did not come up:\n${log.join("")}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const b = await openBrowser();
    try {
      const p = await b.context.newPage();
      // As watch(), except that the browser's own log line for each expected 401 is no error.
      p.on("console", (m) => {
        if (m.type() === "error" && !/status of 401/.test(m.text())) problems.push(`console error: ${m.text()}`);
      });
      p.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
      p.on("request", (r) => {
        const u = r.url();
        if (!u.startsWith(url) && !u.startsWith("blob:") && !u.startsWith("data:")) problems.push(`request outside the test server: ${u}`);
      });
      p.setDefaultTimeout(30000);
      await p.goto(`${url}/?renderer=webgl`);
      await p.waitForSelector("#auth:not([hidden])");
      eq(await p.locator("#auth-error").isHidden(), true, "no error before a token was tried");
      // A wrong token is refused, dropped, and the form says why.
      await p.fill("#auth-token", "wrong-token-0123456789");
      await p.click("#auth-submit");
      await p.waitForSelector("#auth-error:not([hidden])");
      eq((await p.locator("#auth-error").textContent()).trim(), "The collector refused the token: unknown read token", "refusal message");
      eq(await p.evaluate(() => sessionStorage.getItem("trafficmap.readToken")), null, "a refused token is not kept");
      await p.fill("#auth-token", READ_TOKEN);
      await p.click("#auth-submit");
      let st = await ready(p);
      const doc = mapOf("instances", newest);
      eq([st.nodes, st.edges], [doc.nodes.length, drawnLinks(doc)], "the map loads with the token");
      eq(await p.evaluate(() => sessionStorage.getItem("trafficmap.readToken")), READ_TOKEN, "token kept in sessionStorage");
      eq(await p.locator("#auth").isHidden(), true, "form closed");
      eq(await p.locator("#forget-token").isVisible(), true, "forget control shown");
      // The CSV export goes through fetch with the token and is saved under the collector's name.
      const [csv] = await Promise.all([p.waitForEvent("download"), p.locator("#export-csv").click()]);
      eq(csv.suggestedFilename(), `instances-${newest.replaceAll("-", "")}.csv`, "CSV file name");
      const csvPath = join(artifacts, `auth-${csv.suggestedFilename()}`);
      await csv.saveAs(csvPath);
      eq((readFileSync(csvPath, "utf8").match(/^\d+,[^,\n]*,Flowchart Shapes,/gm) ?? []).length, doc.nodes.length, "CSV shape rows");
      // A reload keeps the token (same tab); forgetting it asks again.
      await p.reload();
      st = await ready(p);
      eq(st.nodes, doc.nodes.length, "map after a reload");
      await p.click("#forget-token");
      await p.waitForSelector("#auth:not([hidden])");
      eq(await p.evaluate(() => sessionStorage.getItem("trafficmap.readToken")), null, "token forgotten");
    } finally {
      await b.close();
      child.kill("SIGTERM");
      writeFileSync(join(artifacts, "collector-auth.log"), log.join(""));
      rmSync(out, { recursive: true, force: true });
      rmSync(data, { recursive: true, force: true });
    }
  });
}

backend.stop();
const failed = results.filter(([, good]) => !good).length;
console.log(`\nscreenshots and downloads in ${artifacts}`);
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
