// A small stand-in for the collector's HTTP API (docs/api.md) over a directory of daily map files
// (`instances-YYYYMMDD.json`, ...), serving the built viewer at `/`. For developing the viewer and
// for the benchmark; the browser test runs against the real collector.
//
//   node test/server.mjs [--maps DIR] [--dist DIR] [--port N]
import { createServer } from "node:http";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { dirname, extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json" };
const VIEWS = ["instances", "clusters", "security-groups", "workloads"];

function send(res, status, body, type = "application/json") {
  res.writeHead(status, { "Content-Type": type, "Cache-Control": "no-store" });
  res.end(typeof body === "string" || Buffer.isBuffer(body) ? body : JSON.stringify(body));
}

/** Merges daily maps of one view (a range spanning days): nodes by id, links summed per pair. */
function mergeMaps(docs, from, to) {
  const nodes = new Map();
  const links = new Map();
  for (const d of docs) {
    for (const n of d.nodes) nodes.set(n.id, { ...n, bytes_in: 0, bytes_out: 0, connections: 0, cost_usd: 0 });
    for (const l of d.links) {
      const k = `${l.source}\u0000${l.target}`;
      const m = links.get(k);
      if (!m) links.set(k, { ...l });
      else {
        m.bytes_to_target += l.bytes_to_target;
        m.bytes_to_source += l.bytes_to_source;
        m.connections += l.connections;
        m.disagreement_bytes += l.disagreement_bytes;
        m.cost_usd += l.cost_usd;
      }
    }
  }
  for (const l of links.values()) {
    const s = nodes.get(l.source), t = nodes.get(l.target);
    s.bytes_out += l.bytes_to_target; s.bytes_in += l.bytes_to_source; s.connections += l.connections; s.cost_usd += l.cost_usd;
    if (s !== t) { t.bytes_in += l.bytes_to_target; t.bytes_out += l.bytes_to_source; t.connections += l.connections; t.cost_usd += l.cost_usd; }
  }
  const ls = [...links.values()];
  return {
    schema: "trafficmap.map/v1", view: docs[0].view, from, to, generated_at: docs[docs.length - 1].generated_at,
    nodes: [...nodes.values()], links: ls,
    totals: {
      nodes: nodes.size, links: ls.length, bytes: ls.reduce((a, l) => a + l.bytes_to_target + l.bytes_to_source, 0),
      connections: ls.reduce((a, l) => a + l.connections, 0), cost_usd: ls.reduce((a, l) => a + l.cost_usd, 0),
    },
  };
}

function toCsv(doc) {
  const q = (s) => `"${String(s).replaceAll('"', '""')}"`;
  const rows = ["Id,Name,Shape Library,Page ID,Contained By,Line Source,Line Destination,Source Arrow,Destination Arrow,Text Area 1"];
  doc.nodes.forEach((n, i) => rows.push([i + 1, "Circle", "Flowchart Shapes", 1, "", "", "", "", "", q(n.label)].join(",")));
  const at = new Map(doc.nodes.map((n, i) => [n.id, i + 1]));
  doc.links.forEach((l, i) => rows.push([doc.nodes.length + i + 1, "Line", "", 1, "", at.get(l.source), at.get(l.target), "None", "Arrow", q(l.server_ports.join(" "))].join(",")));
  return rows.join("\n") + "\n";
}

function toDot(doc) {
  const q = (s) => `"${String(s).replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`;
  const lines = [`digraph ${q(`trafficmap ${doc.view}`)} {`];
  for (const n of doc.nodes) lines.push(`  ${q(n.id)} [label=${q(n.label)}];`);
  for (const l of doc.links) lines.push(`  ${q(l.source)} -> ${q(l.target)} [label=${q(l.server_ports.join(","))}];`);
  lines.push("}");
  return lines.join("\n") + "\n";
}

function exportOf(res, doc, format) {
  if (format === "csv") return send(res, 200, toCsv(doc), "text/csv; charset=utf-8");
  if (format === "dot") return send(res, 200, toDot(doc), "text/vnd.graphviz; charset=utf-8");
  return send(res, 400, { error: "format: expected csv or dot (the mock has no draw.io export)" });
}

export function startServer({ mapsDir, distDir = join(here, "..", "dist"), port = 0, maps = null, host = "127.0.0.1", presets = [] } = {}) {
  // `maps`: optional in-memory {"view-YYYYMMDD": doc} (the benchmark's synthetic map).
  const load = (view, day) => {
    const key = `${view}-${day.replaceAll("-", "")}`;
    if (maps) return maps[key] ?? null;
    const f = join(mapsDir, `${key}.json`);
    return existsSync(f) ? JSON.parse(readFileSync(f, "utf8")) : null;
  };
  const days = () => {
    const names = maps ? Object.keys(maps) : readdirSync(mapsDir).filter((f) => f.endsWith(".json")).map((f) => f.slice(0, -5));
    const set = new Set(names.map((n) => n.match(/-(\d{4})(\d{2})(\d{2})$/)).filter(Boolean).map((m) => `${m[1]}-${m[2]}-${m[3]}`));
    return [...set].sort().reverse();
  };
  const mapFor = (p) => {
    const view = p.get("view");
    if (!VIEWS.includes(view)) return [400, { error: "view: expected instances, clusters, security-groups or workloads" }];
    if (p.has("day")) {
      const doc = /^\d{4}-\d{2}-\d{2}$/.test(p.get("day")) ? load(view, p.get("day")) : undefined;
      if (doc === undefined) return [400, { error: "day: expected YYYY-MM-DD" }];
      return doc ? [200, doc] : [404, { error: `no ${view} map for ${p.get("day")}` }];
    }
    const from = Date.parse(p.get("from") ?? ""), to = Date.parse(p.get("to") ?? "");
    if (!Number.isFinite(from) || !Number.isFinite(to) || from >= to) return [400, { error: "from/to: expected RFC 3339 times, from before to" }];
    const docs = [];
    for (let t = Math.floor(from / 864e5) * 864e5; t < to; t += 864e5) {
      const d = load(view, new Date(t).toISOString().slice(0, 10));
      if (d) docs.push(d);
    }
    if (!docs.length) return [404, { error: "no data in that range" }];
    return [200, mergeMaps(docs, p.get("from"), p.get("to"))];
  };
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, "http://localhost");
    // A subset export (the viewer's "what is on screen"): the map limited to the posted nodes
    // and links, as the collector's viewerapi.rs does.
    if (req.method === "POST" && url.pathname === "/api/v1/maps/export") {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      let sub;
      try {
        sub = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        return send(res, 400, { error: "not a subset" });
      }
      const [status, body] = mapFor(url.searchParams);
      if (status !== 200) return send(res, status, body);
      const ids = new Set(sub.nodes);
      const pairs = new Set(sub.links.map(([a, b]) => `${a}\u0000${b}`));
      const part = { ...body, nodes: body.nodes.filter((n) => ids.has(n.id)), links: body.links.filter((l) => ids.has(l.source) && ids.has(l.target) && pairs.has(`${l.source}\u0000${l.target}`)) };
      return exportOf(res, part, url.searchParams.get("format"));
    }
    if (req.method !== "GET") return send(res, 405, { error: "method not allowed" });
    if (url.pathname === "/api/v1/viewer-config") return send(res, 200, { suppression_presets: presets });
    if (url.pathname === "/api/v1/days") return send(res, 200, { days: days() });
    if (url.pathname === "/api/v1/maps") {
      const [status, body] = mapFor(url.searchParams);
      return send(res, status, body);
    }
    if (url.pathname === "/api/v1/maps/export") {
      const [status, body] = mapFor(url.searchParams);
      if (status !== 200) return send(res, status, body);
      return exportOf(res, body, url.searchParams.get("format"));
    }
    if (url.pathname === "/healthz") return send(res, 200, "ok", "text/plain");
    const rel = url.pathname === "/" ? "index.html" : normalize(decodeURIComponent(url.pathname)).replace(/^\/+/, "");
    const file = join(distDir, rel);
    if (!file.startsWith(distDir) || !existsSync(file) || rel.includes("..")) return send(res, 404, { error: "not found" });
    res.writeHead(200, { "Content-Type": TYPES[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) => server.listen(port, host, () => resolve({ server, url: `http://${host}:${server.address().port}` })));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (k, d) => (process.argv.includes(k) ? process.argv[process.argv.indexOf(k) + 1] : d);
  const { url } = await startServer({ mapsDir: arg("--maps", join(here, "fixtures/maps")), distDir: arg("--dist", join(here, "..", "dist")), port: Number(arg("--port", 9978)) });
  console.log(`serving the viewer and a mock API on ${url}`);
}
