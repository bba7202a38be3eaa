// Browser test at fleet scale (issue 14, item 5): the viewer's synthetic fleets
// (bench/synth.mjs: 600 nodes / 3,000 links and 5,000 / 50,000) served as daily map files by the
// real collector (`--collector BIN`, files copied into a fresh --output-dir) or the mock API,
// laid out once per grouping (env; archdomain at level 2; archdomain at level 2 split by env),
// and checked on what the page says it drew (window.__trafficmap.outlines(), drawnLabels(),
// node()):
// - no two group outlines intersect (crossing or one inside the other); with "split by env" each
//   group's outline lies inside its env's, and env outlines do not intersect;
// - every node's centre lies inside its own group's outline;
// - no two drawn labels (node labels and group names) overlap, and no group name covers a node;
//   again after zooming in, where more node labels must be drawn than before;
// - a node dragged out of its group stays inside its outline.
// Screenshots go to --artifacts. Prints the layout time of each case.
//
//   node test/scale.mjs [--collector BIN] [--artifacts DIR] [--chromium PATH] [--only 600|5000]

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { synthMap } from "../bench/synth.mjs";
import { boxDisc, overlappingBoxes, pointInPolygon, polygonInside, polygonsIntersect } from "./geometry.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const opt = (k, d) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : d);
const artifacts = resolve(opt("--artifacts", join(here, "../../target/test-artifacts/viewer-scale")));
const chromiumPath = opt("--chromium", "/usr/bin/chromium");
const collectorBin = opt("--collector", null);
const only = opt("--only", null);
const TOTAL_LIMIT_MS = 6 * 60 * 1000;

const killer = setTimeout(() => {
  console.error(`scale: still running after ${TOTAL_LIMIT_MS / 1000} s, giving up`);
  process.exit(2);
}, TOTAL_LIMIT_MS);
killer.unref();

rmSync(artifacts, { recursive: true, force: true });
mkdirSync(artifacts, { recursive: true });

// Two days, one map each: the small fleet on the 23rd, the big one on the 24th.
const FLEETS = [
  { day: "2026-11-23", nodes: 600, links: 3000, renderer: "webgl" },
  { day: "2026-11-24", nodes: 5000, links: 50000, renderer: "auto" },
].filter((f) => !only || String(f.nodes) === only);
for (const f of FLEETS) {
  f.doc = synthMap(f.nodes, f.links);
  f.doc.from = `${f.day}T00:00:00Z`;
  f.doc.to = `${new Date(Date.parse(f.doc.from) + 864e5).toISOString().slice(0, 19)}Z`;
  f.doc.generated_at = f.doc.to.replace("00:00:00", "00:05:00");
}

const GROUPINGS = [
  { name: "env", query: "group=env", key: (n) => `env:${n.env ?? "(no env)"}` },
  { name: "archdomain-2", query: "group=archdomain&level=2", key: (n) => `arch:${n.archdomain ? n.archdomain.split("/").slice(0, 2).join("/") : "(no archdomain)"}` },
  { name: "archdomain-2-split", query: "group=archdomain&level=2&split=1", key: (n) => `arch:${n.archdomain ? n.archdomain.split("/").slice(0, 2).join("/") : "(no archdomain)"}|${n.env ?? "(no env)"}`, nested: true },
];
const groupOf = (g, n) => (n.kind === "external" ? "external" : g.key(n));

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

/** The daily files, served by the collector (or the mock API without --collector). */
async function startBackend() {
  const out = mkdtempSync(join(tmpdir(), "trafficmap-scale-"));
  for (const f of FLEETS) writeFileSync(join(out, `instances-${f.day.replaceAll("-", "")}.json`), JSON.stringify(f.doc));
  if (!collectorBin) {
    const { startServer } = await import("./server.mjs");
    const { server, url } = await startServer({ mapsDir: out });
    return { url, stop: () => (server.close(), rmSync(out, { recursive: true, force: true })) };
  }
  const data = mkdtempSync(join(tmpdir(), "trafficmap-scale-data-"));
  const config = join(data, "collector.toml");
  writeFileSync(config, ["allow_unauthenticated = true", "[enrich.dns]", "enabled = false", ""].join("\n"));
  const port = await freePort();
  const log = [];
  const child = spawn(resolve(collectorBin), ["serve", "--config", config, "--listen", `127.0.0.1:${port}`, "--output-dir", out, "--data-dir", data, "--no-dns"], { stdio: ["ignore", "pipe", "pipe"] });
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

const results = [];
const problems = [];
function ok(cond, what) {
  if (!cond) throw new Error(what);
}

/** Everything the page drew, read in one go. */
function drawnState() {
  const t = window.__trafficmap;
  const nodes = t.nodeIds().map((id) => ({ id, ...t.node(id) }));
  return { outlines: t.outlines(), labels: t.drawnLabels(), nodes, layout: t.layout, stats: t.stats(), camera: t.camera() };
}

/** The checks of one drawn frame; returns a summary. */
function check(d, fleet, grouping, { nodesInside = true } = {}) {
  const byKey = new Map(fleet.doc.nodes.map((n) => [n.id, groupOf(grouping, n)]));
  const groups = d.outlines.filter((o) => !o.parent);
  const parents = d.outlines.filter((o) => o.parent);
  const want = [...new Set(fleet.doc.nodes.map((n) => groupOf(grouping, n)))].sort();
  ok(JSON.stringify(groups.map((o) => o.key).sort()) === JSON.stringify(want), `outlines ${groups.map((o) => o.key).sort().join(", ")} are not the groups ${want.join(", ")}`);
  const envs = grouping.nested ? [...new Set(fleet.doc.nodes.filter((n) => n.kind !== "external").map((n) => `env:${n.env ?? "(no env)"}`))].sort() : [];
  ok(JSON.stringify(parents.map((o) => o.key).sort()) === JSON.stringify(envs), `env outlines ${parents.map((o) => o.key).join(", ")}, expected ${envs.join(", ")}`);
  // A group's parent: its env's outline (split by env), none for external.
  const parentOf = (key) => (grouping.nested && key !== "external" ? `env:${key.split("|")[1]}` : null);
  for (const o of groups) {
    const p = parentOf(o.key);
    if (p) ok(polygonInside(o.polygon, parents.find((q) => q.key === p).polygon), `${o.key} is not inside ${p}`);
  }
  const top = grouping.nested ? parents.concat(groups.filter((o) => !parentOf(o.key))) : groups;
  const all = grouping.nested ? top.concat(groups.filter((o) => parentOf(o.key))) : groups;
  for (let i = 0; i < all.length; i++) {
    for (let j = i + 1; j < all.length; j++) {
      const a = all[i], b = all[j];
      // A parent and its own child are nested, not disjoint.
      if ((a.parent && parentOf(b.key) === a.key) || (b.parent && parentOf(a.key) === b.key)) continue;
      ok(!polygonsIntersect(a.polygon, b.polygon), `outlines of ${a.key} and ${b.key} intersect`);
    }
  }
  const outline = new Map(groups.map((o) => [o.key, o.polygon]));
  if (nodesInside) {
    const outside = d.nodes.filter((n) => !pointInPolygon([n.x, n.y], outline.get(byKey.get(n.id))));
    ok(outside.length === 0, `${outside.length} node(s) outside their group's outline, e.g. ${JSON.stringify(outside.slice(0, 3))}`);
  }
  const pairs = overlappingBoxes(d.labels);
  ok(pairs.length === 0, `${pairs.length} pair(s) of drawn labels overlap, e.g. ${JSON.stringify(pairs.slice(0, 3).map(([i, j]) => [d.labels[i], d.labels[j]]))}`);
  const names = d.labels.filter((l) => l.group !== undefined);
  for (const l of names) {
    const hit = d.nodes.find((n) => boxDisc(l, n.x, n.y, n.r));
    ok(!hit, `group name ${l.group} covers node ${hit?.id} at (${hit?.x}, ${hit?.y}) r ${hit?.r}`);
  }
  return { groups: groups.length, parents: parents.length, names: names.length, nodeLabels: d.labels.length - names.length };
}

async function step(name, fn) {
  const t0 = Date.now();
  try {
    const info = await fn();
    results.push([name, true]);
    console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)${info ? `: ${info}` : ""}`);
  } catch (e) {
    results.push([name, false]);
    console.log(`FAIL ${name}: ${e.message}`);
  }
}

const backend = await startBackend();
const profile = mkdtempSync(join(tmpdir(), "trafficmap-scale-chromium-"));
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--enable-unsafe-swiftshader"];
const context = await chromium.launchPersistentContext(profile, { executablePath: chromiumPath, headless: true, args: FLAGS, viewport: { width: 1400, height: 860 }, timeout: 30000 });
const page = await context.newPage();
page.on("console", (m) => m.type() === "error" && problems.push(`console error: ${m.text()}`));
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("request", (r) => {
  const u = r.url();
  if (!u.startsWith(backend.url) && !u.startsWith("blob:") && !u.startsWith("data:")) problems.push(`request outside the test server: ${u}`);
});
const frames = () => page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
const timings = [];

for (const fleet of FLEETS) {
  for (const grouping of GROUPINGS) {
    const name = `${fleet.nodes} nodes / ${fleet.links} links, grouped by ${grouping.name}`;
    await step(name, async () => {
      await page.goto(`${backend.url}/?day=${fleet.day}&${grouping.query}&renderer=${fleet.renderer}`);
      await page.waitForFunction(() => window.__trafficmap?.ready === true, null, { timeout: 120000, polling: 200 });
      await frames();
      const d = await page.evaluate(drawnState);
      ok(d.stats.nodes === fleet.doc.nodes.length, `${d.stats.nodes} nodes drawn, the map has ${fleet.doc.nodes.length}`);
      const tag = `${fleet.nodes}-${grouping.name}`;
      await page.screenshot({ path: join(artifacts, `${tag}.png`) });
      const whole = check(d, fleet, grouping);
      timings.push(`${tag}: layout ${(d.layout.millis / 1000).toFixed(2)} s, ${d.layout.iterations} iterations`);
      // Zoomed in on the middle: more room, more node labels, still none overlapping.
      await page.evaluate(() => window.__trafficmap.zoom(4, 0));
      await page.waitForFunction(() => !window.__trafficmap.camera().moving, null, { timeout: 30000 });
      await frames();
      const z = await page.evaluate(drawnState);
      await page.screenshot({ path: join(artifacts, `${tag}-zoomed.png`) });
      const zoomed = check(z, fleet, grouping, { nodesInside: true });
      // More labels as one zooms in: of the nodes still in view, more are labelled than were
      // on the whole map.
      const { width, height } = await page.locator("#map").boundingBox();
      const inView = new Set(z.nodes.filter((n) => n.x >= 0 && n.y >= 0 && n.x <= width && n.y <= height).map((n) => n.id));
      const before = d.labels.filter((l) => l.id !== undefined && inView.has(l.id)).length;
      ok(zoomed.nodeLabels > before, `zoomed in, ${zoomed.nodeLabels} of the ${inView.size} nodes in view are labelled, not more than the ${before} on the whole map`);
      return `${whole.groups} groups${whole.parents ? ` in ${whole.parents} envs` : ""}, ${whole.names} names and ${whole.nodeLabels} node labels drawn (zoomed in: ${zoomed.nodeLabels} of ${inView.size} nodes in view, ${before} before), layout ${(d.layout.millis / 1000).toFixed(2)} s`;
    });
  }
}

// Dragging a node out of its group: it stops at its group's outline.
if (FLEETS.some((f) => f.nodes === 600)) {
  await step("a node dragged out of its group stays inside its outline", async () => {
    const fleet = FLEETS.find((f) => f.nodes === 600);
    const grouping = GROUPINGS[0];
    await page.goto(`${backend.url}/?day=${fleet.day}&${grouping.query}&renderer=${fleet.renderer}`);
    await page.waitForFunction(() => window.__trafficmap?.ready === true, null, { timeout: 120000, polling: 200 });
    await frames();
    const d = await page.evaluate(drawnState);
    const key = (id) => groupOf(grouping, fleet.doc.nodes.find((n) => n.id === id));
    // The biggest node of the prod group, dragged 400 px away from its outline's centre.
    const prod = d.outlines.find((o) => o.key === "env:prod");
    const cx = prod.polygon.reduce((a, p) => a + p[0], 0) / prod.polygon.length;
    const cy = prod.polygon.reduce((a, p) => a + p[1], 0) / prod.polygon.length;
    const n = d.nodes.filter((m) => key(m.id) === "env:prod").reduce((a, b) => (b.r > a.r ? b : a));
    const len = Math.hypot(n.x - cx, n.y - cy) || 1;
    const to = { x: n.x + ((n.x - cx) / len) * 400, y: n.y + ((n.y - cy) / len) * 400 };
    const box = await page.locator("#map").boundingBox();
    await page.mouse.move(box.x + n.x, box.y + n.y);
    await page.mouse.down();
    for (let i = 1; i <= 10; i++) await page.mouse.move(box.x + n.x + ((to.x - n.x) * i) / 10, box.y + n.y + ((to.y - n.y) * i) / 10);
    await page.mouse.up();
    await frames();
    const after = await page.evaluate(drawnState);
    const m = after.nodes.find((q) => q.id === n.id);
    ok(m.pinned, "the dragged node is pinned");
    ok(Math.hypot(m.x - n.x, m.y - n.y) > 5, `the node did not move (${JSON.stringify([n, m])})`);
    check(after, fleet, grouping);
    await page.screenshot({ path: join(artifacts, "600-env-dragged.png") });
    return `moved ${Math.hypot(m.x - n.x, m.y - n.y).toFixed(0)} px of the 400 asked, to the outline`;
  });
}

await context.close();
rmSync(profile, { recursive: true, force: true });
backend.stop();
for (const p of problems) console.log(`FAIL ${p}`);
const failed = results.filter(([, good]) => !good).length + problems.length;
console.log(`\nlayout times: ${timings.join("; ")}`);
console.log(`screenshots in ${artifacts}`);
console.log(`${results.length - results.filter(([, g]) => !g).length} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
