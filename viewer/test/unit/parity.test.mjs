// Issue 12, item 6 (parity with the old D3 tool): suppression of external and untagged nodes by
// name, "hide suppressed nodes too", node size by price, the subset an export of the screen
// covers, pins in the URL, and pinned nodes in the layout. Exact outputs throughout.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Layout } from "../../src/layout.js";
import { applyFilters, facet, indexMap, nodePrice, sizeScale, visibleSubset } from "../../src/model.js";
import { MAX_PINS, formatPin, parsePin, parseState, serializeState, withPin, withoutPin } from "../../src/state.js";

function node(id, extra = {}) {
  return { id, label: id, kind: "host", env: "prod", archdomain: "online/web", addresses: [], instance_id: null, instance_type: null, availability_zone: null, lifecycle: null, price_per_hour: null, security_groups: [], processes: [], server_ports: [], members: 1, bytes_in: 0, bytes_out: 0, connections: 0, cost_usd: 0, ...extra };
}
function link(source, target, a, b = 0) {
  return { source, target, bytes_to_target: a, bytes_to_source: b, connections: 1, server_ports: [443], client_processes: [], server_processes: [], observed_by: "both", disagreement_bytes: 0, cost_usd: 0, cost_kind: "same_az" };
}
function map(nodes, links) {
  return { schema: "trafficmap.map/v1", view: "instances", from: "2026-11-23T00:00:00Z", to: "2026-11-24T00:00:00Z", generated_at: "2026-11-24T00:05:00Z", nodes, links, totals: { nodes: nodes.length, links: links.length, bytes: 0, connections: 0, cost_usd: 0 } };
}

// web -> db, web -> ext (an external address), mon -> web, mon -> db, untagged -> db (no env, no
// archdomain), lonely (no link), and a self-link of db.
const doc = map(
  [
    node("web"),
    node("db", { archdomain: "online/db" }),
    node("ext", { kind: "external", env: null, archdomain: null }),
    node("mon", { env: "prod", archdomain: "infrastructure/monitoring" }),
    node("untagged", { env: null, archdomain: null }),
    node("lonely"),
  ],
  [link("web", "db", 5e9), link("web", "ext", 1e6), link("mon", "web", 1e6), link("mon", "db", 1e6), link("untagged", "db", 2e3), link("db", "db", 7)],
);
const idx = indexMap(doc);

test("external and untagged nodes match `external` and `unknown`, as in the old tool", () => {
  assert.deepEqual(doc.nodes.map((n) => [facet(n, "env"), facet(n, "archdomain")]), [
    ["prod", "online/web"], ["prod", "online/db"], ["external", "external"], ["prod", "infrastructure/monitoring"], ["unknown", "unknown"], ["prod", "online/web"],
  ]);
  // The old index.html's own checkboxes: ^external$ (archdomain and env) and ^unknown.
  let f = applyFilters(idx, { archRe: "^external$" });
  assert.deepEqual([f.nodes, f.links, f.suppressed], [["web", "db", "mon", "untagged", "lonely"], [0, 2, 3, 4], 1]);
  f = applyFilters(idx, { envRe: "^unknown" });
  assert.deepEqual([f.nodes, f.links, f.suppressed], [["web", "db", "ext", "mon", "lonely"], [0, 1, 2, 3], 1]);
  f = applyFilters(idx, { envRe: "^(external|unknown)$" });
  assert.deepEqual([f.nodes, f.links, f.suppressed], [["web", "db", "mon", "lonely"], [0, 2, 3], 2]);
});

test("hide suppressed nodes too: on, the node goes; off, only its links (the old tool's default)", () => {
  let f = applyFilters(idx, { archRe: "^infrastructure/monitoring" });
  assert.deepEqual([f.nodes, f.links, f.suppressed], [["web", "db", "ext", "untagged", "lonely"], [0, 1, 4], 1]);
  f = applyFilters(idx, { archRe: "^infrastructure/monitoring", hideNodes: false });
  assert.deepEqual([f.nodes, f.links, f.suppressed], [["web", "db", "ext", "mon", "untagged", "lonely"], [0, 1, 4], 1]);
  // Off: a node whose links all went to suppression stays (untagged only talked to db).
  f = applyFilters(idx, { hideEnvs: ["prod"], hideNodes: false });
  assert.deepEqual([f.nodes, f.links, f.suppressed], [["web", "db", "ext", "mon", "untagged", "lonely"], [], 4]);
  // Off: a node that loses its links to min bytes still goes (untagged's 2 kB link).
  f = applyFilters(idx, { archRe: "^infrastructure/", minBytes: 1e4, hideNodes: false });
  assert.deepEqual([f.nodes, f.links, f.belowMin], [["web", "db", "ext", "mon", "lonely"], [0, 1], 1]);
});

test("the subset of an export of the screen: shown nodes, shown links once per pair, self-links of shown nodes", () => {
  const f = applyFilters(idx, { archRe: "^infrastructure/monitoring", hideNodes: false });
  assert.deepEqual(visibleSubset(idx, f), {
    nodes: ["web", "db", "ext", "mon", "untagged", "lonely"],
    links: [["web", "db"], ["web", "ext"], ["untagged", "db"], ["db", "db"]],
  });
  // db suppressed and hidden: its links and its self-link go; untagged lost its only link.
  const g = applyFilters(idx, { archRe: "^online/db$" });
  assert.deepEqual(visibleSubset(idx, g), { nodes: ["web", "ext", "mon", "lonely"], links: [["web", "ext"], ["mon", "web"]] });
  // Both directions of a pair are two links; a repeated pair is listed once.
  const two = indexMap(map([node("a"), node("b")], [link("a", "b", 1), link("b", "a", 2), link("a", "b", 3)]));
  assert.deepEqual(visibleSubset(two, applyFilters(two, {})).links, [["a", "b"], ["b", "a"]]);
});

test("node size by price: area follows the price per hour, nodes without one are smallest", () => {
  const nodes = [node("a", { price_per_hour: 0.25 }), node("b", { price_per_hour: 1 }), node("c", { price_per_hour: null }), node("d", { price_per_hour: 0 }), node("e", { price_per_hour: 0.0625 })];
  assert.deepEqual(nodes.map(nodePrice), [0.25, 1, null, null, 0.0625]);
  const sc = sizeScale(nodes, "price", 3, 19);
  assert.deepEqual(nodes.map((n) => sc.size(n)), [11, 19, 3, 3, 7]);
  assert.deepEqual([sc.lo, sc.hi, sc.unpriced], [0.0625, 1, 2]);
  // No price anywhere: every node at the minimum.
  const none = sizeScale([node("x"), node("y")], "price", 3, 18);
  assert.deepEqual([none.size(node("x")), none.unpriced], [3, 2]);
  // By bytes: the log scale between the smallest and largest non-zero, as before.
  const bytes = sizeScale([node("p", { bytes_in: 1e3 }), node("q", { bytes_in: 1e6 }), node("r", { bytes_in: 1e9 }), node("s")], "bytes", 3, 18);
  assert.deepEqual([1e3, 1e6, 1e9, 0].map((b) => bytes.size(node("t", { bytes_in: b }))), [3, 10.5, 18, 3]);
  assert.deepEqual([bytes.lo, bytes.hi, bytes.unpriced], [1e3, 1e9, 0]);
});

test("pins: URL form, bounds, one per node, at most MAX_PINS", () => {
  assert.equal(formatPin(["i-0abc", 12.345, -3]), "i-0abc@12.35,-3");
  assert.deepEqual(parsePin("cluster:online/api|prod@1.5,-2.25"), ["cluster:online/api|prod", 1.5, -2.25]);
  assert.deepEqual(parsePin("odd@id,with@1,2"), ["odd@id,with", 1, 2]);
  for (const bad of ["", "@1,2", "a@1", "a@x,2", "a@1e3,2", `a@${2e7},0`, `${"x".repeat(257)}@1,2`]) assert.equal(parsePin(bad), null, bad);
  assert.equal(formatPin(["a", NaN, 1]), null);
  assert.equal(formatPin(["", 1, 1]), null);
  let pins = withPin([], "a", 1, 2);
  pins = withPin(pins, "b", 3, 4);
  pins = withPin(pins, "a", 5.555, 6);
  assert.deepEqual(pins, [["b", 3, 4], ["a", 5.56, 6]]);
  assert.deepEqual(withoutPin(pins, "b"), [["a", 5.56, 6]]);
  const s = { ...parseState(""), pins };
  assert.equal(serializeState(s), "pin=b%403%2C4&pin=a%405.56%2C6");
  assert.deepEqual(parseState(`?${serializeState(s)}`).pins, pins);
  // A URL with too many pins keeps the last MAX_PINS, malformed ones dropped.
  const q = Array.from({ length: MAX_PINS + 5 }, (_, i) => `pin=n${i}%40${i},0`).concat(["pin=bad"]).join("&");
  const many = parseState(`?${q}`).pins;
  assert.deepEqual([many.length, many[0], many[MAX_PINS - 1]], [MAX_PINS, ["n5", 5, 0], [`n${MAX_PINS + 4}`, MAX_PINS + 4, 0]]);
  assert.deepEqual([parseState("?hideNodes=0&size=price").hideNodes, parseState("?hideNodes=0&size=price").sizeBy], [false, "price"]);
  assert.deepEqual([parseState("?size=weight").sizeBy, parseState("").hideNodes], ["bytes", true]);
  assert.equal(serializeState({ ...parseState(""), hideNodes: false, sizeBy: "price" }), "hideNodes=0&size=price");
});

test("a pinned node does not move in the layout, and the others still settle around it", () => {
  const n = 12;
  const ids = Array.from({ length: n }, (_, i) => `n${i}`);
  const x = new Float32Array(n).fill(NaN);
  const y = new Float32Array(n).fill(NaN);
  x[0] = 40;
  y[0] = -25;
  const fixed = new Uint8Array(n);
  fixed[0] = 1;
  const src = Uint32Array.from(ids.slice(1), (_, i) => i + 1);
  const dst = new Uint32Array(n - 1);
  const input = { ids, x, y, group: new Int32Array(n).fill(-1), groupCount: 0, breakBefore: new Uint8Array(0), src, dst, bytes: new Float64Array(n - 1).fill(1e6), influence: 1, sizes: new Float32Array(n).fill(30), viewport: { width: 400, height: 300 }, fixed };
  const l = new Layout(input);
  let guard = 0;
  while (!l.step(20).settled && guard++ < 1000);
  const p = l.positions();
  assert.deepEqual([p[0], p[1]], [40, -25]);
  // The others moved from their seeds towards the pinned hub.
  const free = new Layout({ ...input, fixed: undefined, x: new Float32Array(n).fill(NaN), y: new Float32Array(n).fill(NaN) }).positions();
  let moved = 0;
  for (let i = 1; i < n; i++) if (Math.hypot(p[2 * i] - free[2 * i], p[2 * i + 1] - free[2 * i + 1]) > 1) moved++;
  assert.equal(moved, n - 1);
  // Grouped: the re-pack moves a group's members with its anchor, but not a pinned member.
  const g = new Layout({ ...input, group: new Int32Array(n).fill(0), groupCount: 1, breakBefore: new Uint8Array(1), x: Float32Array.from(x), y: Float32Array.from(y) });
  guard = 0;
  while (!g.step(20).settled && guard++ < 1000);
  assert.deepEqual([g.positions()[0], g.positions()[1]], [40, -25]);
});
