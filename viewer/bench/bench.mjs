// `cargo xtask bench viewer`: the viewer's group-first layout (issue 14) beside the layout it
// replaced (row packing, selected by the URL parameter `layout=old`), in the same run and the
// same headless Chromium, on the synthetic fleets of 600 nodes / 3,000 links and 5,000 / 50,000
// (bench/synth.mjs), grouped by env. Measures the layout time, the time from page load to a
// settled layout, and frames per second while the camera pans and zooms (requestAnimationFrame
// callbacks counted during a scripted camera path). `--baseline` adds, for the big map, sigma on
// software WebGL and the d3-force + SVG baseline (the old tool's approach) of issue 5.
//
//   node bench/bench.mjs [--seconds S] [--runs R] [--baseline] [--out-json FILE] [--out-md FILE]
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
const SIZES = [
  { nodes: 600, links: 3000, day: "2026-11-23" },
  { nodes: 5000, links: 50000, day: "2026-11-24" },
];
const WITH_BASELINE = argv.includes("--baseline");
const SECONDS = Number(opt("--seconds", 5));
const BASELINE_LIMIT_S = Number(opt("--baseline-limit", 120));
// The machine is shared: each viewer case runs this many times and reports the median run
// (by settle time; fps is that run's), with the spread.
const RUNS = Number(opt("--runs", 1));
const artifacts = resolve(opt("--artifacts", join(here, "../../target/test-artifacts/viewer-bench")));
const chromiumPath = opt("--chromium", "/usr/bin/chromium");
let DAY = SIZES[1].day;

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

const docs = new Map(SIZES.map((z) => [z.day, synthMap(z.nodes, z.links)]));
let doc = docs.get(DAY);
const { server, url } = await startServer({ distDir: site, maps: Object.fromEntries(SIZES.map((z) => [`instances-${z.day.replaceAll("-", "")}`, docs.get(z.day)])) });

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
    console.log(`bench: ${label} (${stats.nodes} nodes): settled ${(layout.settledAt / 1000).toFixed(2)} s after navigation (layout ${(layout.millis / 1000).toFixed(2)} s, ${layout.iterations} iterations), ${fps.fps.toFixed(1)} fps`);
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
const table = [];
try {
  for (const z of SIZES) {
    DAY = z.day;
    doc = docs.get(DAY);
    console.log(`bench: synthetic map with ${doc.nodes.length} nodes, ${doc.links.length} links`);
    const fresh = await median(`viewer-${z.nodes}-new`, [], "");
    const old = await median(`viewer-${z.nodes}-old`, [], "&layout=old");
    table.push({ size: z, fresh, old });
  }
  results = table.flatMap((t) => [t.fresh, t.old]);
  if (WITH_BASELINE) {
    // Issue 5's comparison on the big map: sigma forced onto software WebGL, and d3-force + SVG.
    results.push(await median("viewer-5000-webgl-software", [], "&renderer=webgl"), await baseline());
  }
} finally {
  server.close();
  rmSync(site, { recursive: true, force: true });
}

const machine = {
  cpu: cpus()[0]?.model ?? "unknown",
  cores: cpus().length,
  memGiB: Math.round(totalmem() / 2 ** 30),
  loadAtStart: loadAtStart.map((x) => x.toFixed(2)).join(" "),
  loadAtEnd: loadavg().map((x) => x.toFixed(2)).join(" "),
  browser: results[0].browser,
  node: process.version,
  date: new Date().toISOString().slice(0, 10),
};
const json = { seconds: SECONDS, runs: RUNS, machine, table, results };
const outJson = opt("--out-json", join(artifacts, "viewer-bench.json"));
writeFileSync(outJson, JSON.stringify(json, null, 2) + "\n");

const s = (x) => (x === null || x === undefined ? "–" : `${x.toFixed(1)} s`);
const fpsOf = (r) => r.fpsMedian ?? r.fps;
const ratio = (a, b) => (b > 0 ? `${(a / b).toFixed(2)}×` : "–");
const met = (ok) => (ok ? "met" : "**missed**");
const rows = table.map(({ size, fresh, old }) => {
  const goal = size.nodes <= 600 ? 3 : 10;
  return `| ${size.nodes.toLocaleString("en-US")} / ${size.links.toLocaleString("en-US")} | ${s(fresh.layoutS)} (${fresh.iterations} of ${fresh.maxIterations}${fresh.budgetSpent ? ", budget" : ""}) | ${s(old.layoutS)} (${old.iterations} of ${old.maxIterations}${old.budgetSpent ? ", budget" : ""}) | ${ratio(fresh.layoutS, old.layoutS)} | ${s(fresh.settledS)} / ${s(old.settledS)} | **${fpsOf(fresh).toFixed(1)}** / ${fpsOf(old).toFixed(1)} | ${ratio(fpsOf(fresh), fpsOf(old))} | layout ≤ ${goal} s: ${met(fresh.layoutS <= goal)}; ≥ 30 fps: ${met(fpsOf(fresh) >= 30)} |`;
});
const extra = WITH_BASELINE
  ? `\nIssue 5's comparison on the big map (\`--baseline\`): sigma.js forced onto software WebGL settled after ${s(results[4].settledS)} at ${fpsOf(results[4]).toFixed(1)} fps; the d3-force + SVG baseline ${results[5].settled ? `settled after ${s(results[5].settledS)}` : `did not settle within ${BASELINE_LIMIT_S} s`} at ${fpsOf(results[5]).toFixed(1)} fps.\n`
  : "";
const md = `## Viewer

Synthetic fleets (\`viewer/bench/synth.mjs\`, seeded; 40 archdomain × env clusters) of 600 nodes / 3,000 links
and 5,000 nodes / 50,000 links, grouped by env, in headless Chromium ${machine.browser ?? ""} (Debian's build;
software WebGL through SwiftShader, no GPU, so the viewer draws with Canvas 2D), viewport 1400×860.
**new**: the group-first layout of issue 14 (regions packed first, ForceAtlas2 inside them);
**old**: the layout before it (ForceAtlas2 with group anchors re-packed in rows), selected by the
URL parameter \`layout=old\` in the same build and the same run. "Layout" is the time the layout
took in its web worker (iterations run of the cap; "budget": the forces stopped at the 7 s budget);
"settled" is the time from navigation to the last layout position drawn. Frames per second are
\`requestAnimationFrame\` callbacks counted over ${SECONDS} s while the mouse drags the map in circles and
turns the wheel in and out (real input events), after the layout. Ratios are new / old. ${RUNS > 1 ? `Median of ${RUNS} runs per cell.` : "One run per cell (the machine is shared)."}

| nodes / links | layout, new | layout, old | layout ratio | settled, new / old | fps panning, new / old | fps ratio | goals (new) |
| --- | --- | --- | --- | --- | --- | --- | --- |
${rows.join("\n")}
${extra}
Goals (issue 14): layout ≤ 3 s for 600 nodes, ≤ 10 s for 5,000, ≥ 30 fps while panning. Machine: ${machine.cpu}, ${machine.cores} cores,
${machine.memGiB} GiB, shared (load average ${machine.loadAtStart} at the start, ${machine.loadAtEnd} at the end), Node ${machine.node}, ${machine.date}.
Command: \`cargo xtask bench viewer\` (runs \`nice node bench/bench.mjs\` in \`viewer/\`; screenshots and raw JSON in
\`target/test-artifacts/viewer-bench/\`).
`;
const outMd = opt("--out-md", join(artifacts, "viewer-bench.md"));
writeFileSync(outMd, md);
console.log(md);
console.log(`bench: results in ${outJson} and ${outMd}`);
