// `cargo xtask bench viewer`: the viewer against a d3-force + SVG baseline (the old viewer's
// approach), in the same headless Chromium, on the same synthetic map (5,000 nodes, 50,000
// links by default). Measures the time from page load to a settled layout, and frames per
// second while the camera pans and zooms (requestAnimationFrame callbacks counted during a
// scripted camera path).
//
//   node bench/bench.mjs [--nodes N] [--links M] [--seconds S] [--out-json FILE] [--out-md FILE]
//                        [--artifacts DIR] [--chromium PATH]
import { build } from "esbuild";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startServer } from "../test/server.mjs";
import { synthMap } from "./synth.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const opt = (k, d) => (argv.includes(k) ? argv[argv.indexOf(k) + 1] : d);
const NODES = Number(opt("--nodes", 5000));
const LINKS = Number(opt("--links", 50000));
const SECONDS = Number(opt("--seconds", 5));
const BASELINE_LIMIT_S = Number(opt("--baseline-limit", 120));
// The machine is shared: each viewer case runs this many times and reports the median run
// (by settle time; fps is that run's), with the spread.
const RUNS = Number(opt("--runs", 3));
const artifacts = resolve(opt("--artifacts", join(here, "../../target/test-artifacts/viewer-bench")));
const chromiumPath = opt("--chromium", "/usr/bin/chromium");
const DAY = "2026-11-23";

const hardStop = setTimeout(() => {
  console.error("bench: over 15 minutes, giving up");
  process.exit(2);
}, 15 * 60 * 1000);
hardStop.unref();

mkdirSync(artifacts, { recursive: true });
const loadAtStart = loadavg();

// The site: the committed viewer bundle plus the baseline page, bundled here from bench/.
const site = mkdtempSync(join(tmpdir(), "trafficmap-bench-"));
cpSync(join(here, "../dist"), site, { recursive: true });
await build({ entryPoints: [join(here, "baseline.js")], bundle: true, minify: true, format: "esm", outfile: join(site, "baseline.js"), logLevel: "warning" });
writeFileSync(join(site, "baseline.html"), '<!doctype html><meta charset="utf-8"><title>baseline</title><link rel="icon" href="data:,"><style>body{margin:0;background:#f7f8fa}</style><script type="module" src="./baseline.js"></script>\n');

const doc = synthMap(NODES, LINKS);
console.log(`bench: synthetic map with ${doc.nodes.length} nodes, ${doc.links.length} links`);
const { server, url } = await startServer({ distDir: site, maps: { [`instances-${DAY.replaceAll("-", "")}`]: doc } });

const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--enable-unsafe-swiftshader"];

async function withPage(extra, fn) {
  const profile = mkdtempSync(join(tmpdir(), "trafficmap-bench-chromium-"));
  const ctx = await chromium.launchPersistentContext(profile, { executablePath: chromiumPath, headless: true, args: [...FLAGS, ...extra], viewport: { width: 1400, height: 860 } });
  try {
    const page = await ctx.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    const out = await fn(page);
    if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
    return { ...out, browser: ctx.browser()?.version() ?? null };
  } finally {
    await ctx.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

/** Counts animation frames in the page for `seconds`. */
function countFrames(seconds) {
  return new Promise((resolve) => {
    let frames = 0;
    let worst = 0;
    let t0 = 0;
    let last = 0;
    const loop = (now) => {
      if (!t0) t0 = last = now;
      frames++;
      worst = Math.max(worst, now - last);
      last = now;
      if (now - t0 < seconds * 1000) requestAnimationFrame(loop);
      else resolve({ frames, seconds: (now - t0) / 1000, fps: frames / ((now - t0) / 1000), worstFrameMs: worst });
    };
    requestAnimationFrame(loop);
  });
}

/**
 * Pans and zooms as a user does, with real input events, while the page counts its frames:
 * alternately a second of dragging in circles and a second of wheel steps in and out.
 */
async function panAndZoom(page, selector) {
  const box = await page.locator(selector).boundingBox();
  const cx = box.x + box.width / 2;
  const cy = box.y + box.height / 2;
  await page.mouse.move(cx, cy);
  const counting = page.evaluate(countFrames, SECONDS);
  const end = Date.now() + SECONDS * 1000;
  let i = 0;
  let down = false;
  while (Date.now() < end) {
    const drag = Math.floor(i / 40) % 2 === 0;
    if (drag) {
      if (!down) {
        await page.mouse.down();
        down = true;
      }
      await page.mouse.move(cx + 160 * Math.sin(i / 6), cy + 110 * Math.cos(i / 6));
    } else {
      if (down) {
        await page.mouse.up();
        down = false;
        await page.mouse.move(cx, cy);
      }
      await page.mouse.wheel(0, i % 40 < 20 ? -60 : 60);
      await new Promise((r) => setTimeout(r, 16));
    }
    i++;
  }
  if (down) await page.mouse.up();
  const fps = await counting;
  return { ...fps, inputEvents: i };
}

async function viewer(label, extra, query = "") {
  return withPage(extra, async (page) => {
    await page.goto(`${url}/?day=${DAY}&group=env${query}`);
    await page.waitForFunction(() => window.__trafficmap?.ready === true, null, { timeout: 120000, polling: 100 });
    const layout = await page.evaluate(() => window.__trafficmap.layout);
    const stats = await page.evaluate(() => window.__trafficmap.stats());
    await page.screenshot({ path: join(artifacts, `${label}.png`) });
    const fps = await panAndZoom(page, "#map");
    // The sharp redraw after the motion: how long the renderer takes for one full frame.
    await page.waitForFunction(() => !window.__trafficmap.camera().moving && Number.isFinite(window.__trafficmap.camera().frameMs), null, { timeout: 60000 });
    fps.redrawMs = await page.evaluate(() => window.__trafficmap.camera().frameMs);
    console.log(`bench: ${label}: settled ${(layout.settledAt / 1000).toFixed(2)} s after navigation (layout ${(layout.millis / 1000).toFixed(2)} s, ${layout.iterations} iterations), ${fps.fps.toFixed(1)} fps`);
    return { label, renderer: stats.renderer, nodes: stats.nodes, edges: stats.edges, settledS: layout.settledAt / 1000, layoutS: layout.millis / 1000, iterations: layout.iterations, maxIterations: layout.maxIterations, budgetSpent: layout.budgetSpent, settled: true, ...fps };
  });
}

async function baseline() {
  return withPage([], async (page) => {
    await page.goto(`${url}/baseline.html?day=${DAY}`);
    const deadline = Date.now() + BASELINE_LIMIT_S * 1000;
    let r;
    for (;;) {
      r = await page.evaluate(() => ({ ...window.__baseline, now: performance.now() }));
      if (r.state === "settled" || Date.now() > deadline) break;
      await new Promise((res) => setTimeout(res, 1000));
    }
    await page.evaluate(() => window.__baselineStop?.());
    const settled = r.state === "settled";
    await page.screenshot({ path: join(artifacts, "baseline-d3-svg.png") });
    const fps = await panAndZoom(page, "svg");
    const settledS = settled ? (r.start + r.millis) / 1000 : null;
    console.log(`bench: baseline: ${settled ? `settled ${settledS.toFixed(2)} s after navigation` : `not settled after ${BASELINE_LIMIT_S} s (${r.ticks} of ${r.maxTicks} ticks)`}, ${fps.fps.toFixed(1)} fps`);
    return { label: "baseline-d3-svg", renderer: "svg", nodes: doc.nodes.length, edges: doc.links.length, settled, settledS, layoutS: settled ? r.millis / 1000 : null, iterations: r.ticks, maxIterations: r.maxTicks, ...fps };
  });
}

async function median(label, extra, query) {
  const runs = [];
  for (let i = 0; i < RUNS; i++) runs.push(await viewer(label, extra, query));
  const bySettle = runs.slice().sort((a, b) => a.settledS - b.settledS);
  const mid = bySettle[Math.floor(runs.length / 2)];
  const fps = runs.map((r) => r.fps).sort((a, b) => a - b);
  return { ...mid, runs: runs.length, settledRange: [bySettle[0].settledS, bySettle[runs.length - 1].settledS], fpsMedian: fps[Math.floor(fps.length / 2)], fpsRange: [fps[0], fps[fps.length - 1]] };
}

let results;
try {
  // The default (auto: Canvas 2D here, where WebGL is SwiftShader), sigma forced onto
  // SwiftShader's software WebGL, and the d3-force + SVG baseline.
  results = [await median("viewer-auto", [], ""), await median("viewer-webgl-software", [], "&renderer=webgl"), await baseline()];
} finally {
  server.close();
  rmSync(site, { recursive: true, force: true });
}

const machine = {
  cpu: cpus()[0]?.model ?? "unknown",
  cores: cpus().length,
  memGiB: Math.round(totalmem() / 2 ** 30),
  loadAtStart: loadAtStart.map((x) => x.toFixed(2)).join(" "),
  browser: results[0].browser,
  node: process.version,
  date: new Date().toISOString().slice(0, 10),
};
const json = { nodes: doc.nodes.length, links: doc.links.length, seconds: SECONDS, machine, results };
const outJson = opt("--out-json", join(artifacts, "viewer-bench.json"));
writeFileSync(outJson, JSON.stringify(json, null, 2) + "\n");

const s = (x) => (x === null || x === undefined ? "–" : `${x.toFixed(1)} s`);
const [auto, webgl, base] = results;
const range = (r, k, f) => (r[k] ? ` (${f(r[k][0])}–${f(r[k][1])})` : "");
const row = (name, r) => `| ${name} | ${r.settled ? `${s(r.settledS)}${range(r, "settledRange", (x) => x.toFixed(1))}` : `not settled after ${BASELINE_LIMIT_S} s`} | ${r.settled ? s(r.layoutS) : "–"} | ${r.iterations}${r.maxIterations ? ` of ${r.maxIterations}` : ""} | **${(r.fpsMedian ?? r.fps).toFixed(1)}**${range(r, "fpsRange", (x) => x.toFixed(0))} | ${r.worstFrameMs.toFixed(0)} ms | ${r.redrawMs ? `${(r.redrawMs / 1000).toFixed(2)} s` : "every frame"} |`;
const md = `## Viewer

Synthetic map: ${doc.nodes.length.toLocaleString("en-US")} nodes and ${doc.links.length.toLocaleString("en-US")} links in 40 archdomain × env clusters
(\`viewer/bench/synth.mjs\`, seeded), grouped by env, in headless Chromium ${machine.browser ?? ""} (Debian's build;
software WebGL through SwiftShader, no GPU), viewport 1400×860. Each page is loaded fresh; "settled" is
the time from navigation to the last layout position drawn (the viewer: ForceAtlas2 in a web worker,
then the overlap pass; the forces stop after 7 s of layout if they have not converged by then, so
"iterations" can be less than the cap; the baseline: d3-force's default 300-tick cooling with an SVG
update per tick, as the old viewer did). Frames per second are \`requestAnimationFrame\` callbacks counted over ${SECONDS} s while
the mouse drags the map in circles and turns the wheel in and out (real input events), after the
layout. While the camera moves, the viewer moves its last frame as a bitmap and redraws sharp when
the motion stops ("sharp redraw": time for that one frame); the baseline re-renders its SVG on
every event, as d3-zoom does. Viewer rows: median of ${RUNS} runs, with the range over the runs in
parentheses (settle time in seconds, fps); the baseline runs once.

| | settled after load | layout alone | iterations | fps panning + zooming | worst frame | sharp redraw |
| --- | --- | --- | --- | --- | --- | --- |
${row(`trafficmap viewer, default (${auto.renderer === "canvas" ? "Canvas 2D: WebGL here is software" : "WebGL"})`, auto)}
${row("trafficmap viewer, sigma.js forced onto software WebGL", webgl)}
${row("baseline: d3-force + SVG", base)}

Targets (issue 5): at least 30 fps, settled within 10 s. Machine: ${machine.cpu}, ${machine.cores} cores,
${machine.memGiB} GiB, shared (load average ${machine.loadAtStart} at the start), Node ${machine.node}, ${machine.date}.
Command: \`cargo xtask bench viewer\` (runs \`node bench/bench.mjs\` in \`viewer/\`; screenshots and raw JSON in
\`target/test-artifacts/viewer-bench/\`).
`;
const outMd = opt("--out-md", join(artifacts, "viewer-bench.md"));
writeFileSync(outMd, md);
console.log(md);
console.log(`bench: results in ${outJson} and ${outMd}`);
