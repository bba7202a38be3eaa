// Builds the viewer bundle into dist/ (committed; the collector embeds it and serves it at `/`).
//
//   node build.mjs                 build into dist/
//   node build.mjs --out DIR       build into DIR
//   node build.mjs --dev --out DIR unminified, for profiling
//   node build.mjs --check         build into a temporary directory and fail unless it equals
//                                  dist/ byte for byte, and unless dist/ is self-contained
//
// The build is deterministic (esbuild, content-hashed file names, no timestamps), so a stale
// dist/ shows up as a difference. Assets use relative URLs and the app calls /api/v1/...
// on its own origin, so dist/ works from any static server.
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { externalReferences, listFiles } from "./bundle-refs.mjs";

const root = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const check = args.includes("--check");
// --dev: readable output for profiling (never committed: --check builds minified).
const dev = args.includes("--dev") && !check;
const outArg = args.indexOf("--out");
const dist = join(root, "dist");
const out = check ? mkdtempSync(join(tmpdir(), "trafficmap-viewer-")) : outArg >= 0 ? args[outArg + 1] : dist;

const hash8 = (buf) => createHash("sha256").update(buf).digest("hex").slice(0, 10);

const common = {
  bundle: true,
  minify: !dev,
  format: "iife",
  target: ["chrome110", "firefox115", "safari16"],
  write: false,
  legalComments: "eof",
  charset: "utf8",
  logLevel: "warning",
  absWorkingDir: root,
};

async function bundle() {
  const worker = await build({ ...common, entryPoints: ["src/layout-worker.js"], outfile: "worker.js" });
  const workerJs = worker.outputFiles[0].contents;
  const workerName = `assets/worker-${hash8(workerJs)}.js`;
  const app = await build({
    ...common,
    entryPoints: ["src/main.js"],
    outdir: "out",
    define: { __WORKER_URL__: JSON.stringify(`./${workerName}`) },
  });
  const files = new Map();
  files.set(workerName, workerJs);
  let jsName = null;
  let cssName = null;
  for (const f of app.outputFiles) {
    if (f.path.endsWith(".js")) {
      jsName = `assets/app-${hash8(f.contents)}.js`;
      files.set(jsName, f.contents);
    } else if (f.path.endsWith(".css")) {
      cssName = `assets/app-${hash8(f.contents)}.css`;
      files.set(cssName, f.contents);
    }
  }
  if (!jsName || !cssName) throw new Error("esbuild produced no app.js or app.css");
  const html = readFileSync(join(root, "src/index.html"), "utf8").replace("./__CSS__", `./${cssName}`).replace("./__JS__", `./${jsName}`);
  files.set("index.html", Buffer.from(html));
  files.set("favicon.svg", readFileSync(join(root, "src/favicon.svg")));
  return files;
}

const files = await bundle();
rmSync(out, { recursive: true, force: true });
for (const [name, contents] of files) {
  mkdirSync(dirname(join(out, name)), { recursive: true });
  writeFileSync(join(out, name), contents);
}

if (check) {
  const problems = [];
  const want = listFiles(out);
  let have = [];
  try {
    have = listFiles(dist);
  } catch {
    problems.push("viewer/dist/ is missing");
  }
  for (const f of want) if (!have.includes(f)) problems.push(`missing from dist/: ${f}`);
  for (const f of have) if (!want.includes(f)) problems.push(`stale file in dist/: ${f}`);
  for (const f of want) {
    if (have.includes(f) && !readFileSync(join(out, f)).equals(readFileSync(join(dist, f)))) problems.push(`differs from a fresh build: dist/${f}`);
  }
  for (const p of externalReferences(dist)) problems.push(`external reference: ${p}`);
  rmSync(out, { recursive: true, force: true });
  if (problems.length) {
    console.error(`viewer bundle check FAILED:\n  ${problems.join("\n  ")}\nRebuild with \`cargo xtask viewer build\` (or \`npm run build\` in viewer/) and commit viewer/dist/.`);
    process.exit(1);
  }
  console.log(`viewer bundle check: dist/ is current and self-contained (${want.length} files)`);
} else {
  const sizes = [...files].map(([n, c]) => `${n} ${(c.length / 1024).toFixed(1)} KiB`);
  console.log(`built ${relative(process.cwd(), out) || "."}: ${sizes.join(", ")}`);
}
