import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { addDays, fmtSeen, applyFilters, archPrefix, archTree, checkMap, compareEnvs, compareGroups, compileRegex, diffMaps, envList, fmtBytes, fmtUsd, groupKey, indexMap, logScale, parseBytes, parseQuery, peersOf, regexHazard, searchNodes, withNeighbours, MAX_REGEX_LENGTH } from "../../src/model.js";

const here = dirname(fileURLToPath(import.meta.url));
const fixtures = join(here, "../fixtures/maps");
const load = (name) => JSON.parse(readFileSync(join(fixtures, `${name}.json`), "utf8"));

function node(id, extra = {}) {
  return { id, label: id, kind: "host", env: "prod", archdomain: "online/web", addresses: [], instance_id: null, instance_type: null, availability_zone: null, lifecycle: null, price_per_hour: null, security_groups: [], processes: [], server_ports: [], members: 1, bytes_in: 0, bytes_out: 0, connections: 0, cost_usd: 0, ...extra };
}
function link(source, target, a, b = 0, extra = {}) {
  return { source, target, bytes_to_target: a, bytes_to_source: b, connections: 1, server_ports: [443], client_processes: [], server_processes: [], observed_by: "both", disagreement_bytes: 0, cost_usd: 0, cost_kind: "same_az", ...extra };
}
function map(nodes, links) {
  return { schema: "trafficmap.map/v1", view: "instances", from: "2026-11-23T00:00:00Z", to: "2026-11-24T00:00:00Z", generated_at: "2026-11-24T00:05:00Z", nodes, links, totals: { nodes: nodes.length, links: links.length, bytes: 0, connections: 0, cost_usd: 0 } };
}

// The fields map.rs writes, in its order; deny_unknown_fields on the Rust side.
const NODE_FIELDS = ["id", "label", "kind", "env", "archdomain", "addresses", "instance_id", "instance_type", "availability_zone", "lifecycle", "price_per_hour", "security_groups", "processes", "server_ports", "members", "bytes_in", "bytes_out", "connections", "cost_usd"];
const LINK_FIELDS = ["source", "target", "bytes_to_target", "bytes_to_source", "connections", "server_ports", "client_processes", "server_processes", "observed_by", "disagreement_bytes", "cost_usd", "cost_kind"];

test("fixtures follow the map contract of trafficmap-model/src/map.rs", () => {
  const files = readdirSync(fixtures);
  assert.equal(files.length, 9);
  for (const f of files) {
    const doc = JSON.parse(readFileSync(join(fixtures, f), "utf8"));
    assert.deepEqual(Object.keys(doc), ["schema", "view", "from", "to", "generated_at", "nodes", "links", "totals"], f);
    assert.deepEqual(checkMap(doc), [], f);
    for (const n of doc.nodes) assert.deepEqual(Object.keys(n), NODE_FIELDS, `${f} ${n.id}`);
    for (const l of doc.links) assert.deepEqual(Object.keys(l), LINK_FIELDS, `${f} ${l.source}`);
    const bytes = doc.links.reduce((a, l) => a + l.bytes_to_target + l.bytes_to_source, 0);
    assert.deepEqual([doc.totals.nodes, doc.totals.links, doc.totals.bytes], [doc.nodes.length, doc.links.length, bytes], f);
    assert.equal(new Set(doc.nodes.map((n) => n.id)).size, doc.nodes.length, `${f}: unique ids`);
  }
});

test("checkMap rejects other schemas and reports dangling links", () => {
  assert.match(checkMap({ schema: "trafficmap.map/v2", nodes: [], links: [] })[0], /unsupported schema/);
  assert.deepEqual(checkMap(map([node("a")], [link("a", "b", 1)])), ["links[0] references a missing node"]);
  const idx = indexMap(map([node("a")], [link("a", "b", 1), link("a", "a", 5)]));
  assert.equal(idx.links.length, 0, "dangling link dropped");
  assert.equal(idx.selfLinks.length, 1, "self-link kept apart");
});

test("envs sort production first, then by name", () => {
  assert.deepEqual(["dev", "zeta", "stage", "prod", null, "alpha"].sort(compareEnvs), ["prod", "stage", "dev", "alpha", "zeta", null]);
  assert.deepEqual(envList([node("a", { env: "stage" }), node("b", { env: "prod" }), node("c", { env: "prod" })]), [{ env: "prod", count: 2 }, { env: "stage", count: 1 }]);
});

test("archdomain prefixes and tree", () => {
  assert.equal(archPrefix("online/midtier/search", 2), "online/midtier");
  assert.equal(archPrefix("online/midtier/search", 5), "online/midtier/search");
  assert.equal(archPrefix(null, 1), null);
  const tree = archTree([node("a", { archdomain: "online/midtier/search" }), node("b", { archdomain: "online/web" }), node("c", { archdomain: null })]);
  assert.deepEqual(tree.map((t) => [t.prefix, t.count, t.depth]), [["online", 2, 0], ["online/midtier", 1, 1], ["online/midtier/search", 1, 2], ["online/web", 1, 1]]);
});

test("group keys per grouping mode", () => {
  const n = node("a", { env: "stage", archdomain: "online/midtier/search" });
  assert.equal(groupKey(n, { mode: "none" }), null);
  assert.equal(groupKey(n, { mode: "env" }), "env:stage");
  assert.equal(groupKey(n, { mode: "archdomain", level: 2 }), "arch:online/midtier");
  assert.equal(groupKey(n, { mode: "archdomain", level: 1, splitEnv: true }), "arch:online|stage");
  assert.equal(groupKey(node("x", { kind: "external", env: null, archdomain: null }), { mode: "env" }), "external");
  assert.equal(groupKey(node("y", { env: null, archdomain: null }), { mode: "archdomain", level: 1 }), "arch:(no archdomain)");
  assert.deepEqual(["external", "arch:b|prod", "arch:a|stage", "arch:a|prod"].sort(compareGroups), ["arch:a|prod", "arch:b|prod", "arch:a|stage", "external"]);
});

test("filters: suppression takes the node and its links; lost nodes go; unlinked nodes stay", () => {
  const doc = map(
    [node("web", { env: "prod" }), node("mon", { archdomain: "infra/monitoring" }), node("db", { env: "prod", archdomain: "online/db" }), node("lonely"), node("st", { env: "stage" })],
    [link("web", "db", 5e9), link("mon", "web", 1e6), link("mon", "db", 1e6), link("st", "db", 2e3)],
  );
  const idx = indexMap(doc);
  let f = applyFilters(idx, { archRe: "^infra/" });
  assert.deepEqual(f.nodes, ["web", "db", "lonely", "st"]);
  assert.deepEqual(f.links, [0, 3]);
  assert.equal(f.suppressed, 1);
  f = applyFilters(idx, { hideArchs: ["infra"], minBytes: 1e9 });
  assert.deepEqual(f.nodes, ["web", "db", "lonely"], "st lost its only link to min bytes");
  assert.equal(f.belowMin, 1);
  f = applyFilters(idx, { hideEnvs: ["stage"], envRe: "^pro" });
  assert.deepEqual([f.nodes, f.links, f.suppressed], [[], [], 5], "every node is prod (by regex) or stage (by box)");
  f = applyFilters(idx, { hideEnvs: ["stage"] });
  assert.deepEqual(f.nodes, ["web", "mon", "db", "lonely"]);
  assert.deepEqual(applyFilters(idx, { archRe: "([" }).suppressed, 0, "an invalid regex suppresses nothing");
});

test("search: text, port, CIDR, prefixes; neighbours", () => {
  const doc = map(
    [node("i-1", { label: "web-1", addresses: ["10.1.2.3"], processes: ["nginx"], server_ports: [443] }), node("i-2", { label: "db-1", addresses: ["10.1.9.9"], server_ports: [5432], archdomain: "online/db" }), node("i-3", { label: "cache", addresses: ["192.168.0.1"], env: "stage", archdomain: "infra/cache" })],
    [link("i-1", "i-2", 10)],
  );
  const idx = indexMap(doc);
  const all = doc.nodes.map((n) => n.id);
  assert.deepEqual(searchNodes(idx, "web", all), ["i-1"]);
  assert.deepEqual(searchNodes(idx, ":5432", all), ["i-2"]);
  assert.deepEqual(searchNodes(idx, "port:443", all), ["i-1"]);
  assert.deepEqual(searchNodes(idx, "10.1.0.0/16", all), ["i-1", "i-2"]);
  assert.deepEqual(searchNodes(idx, "10.1.0.0/16 db", all), ["i-2"], "terms combine with AND");
  assert.deepEqual(searchNodes(idx, "arch:online", all), ["i-1", "i-2"]);
  assert.deepEqual(searchNodes(idx, "env:stage", all), ["i-3"]);
  assert.deepEqual(searchNodes(idx, "proc:ngi", all), ["i-1"]);
  assert.deepEqual(searchNodes(idx, "", all), []);
  assert.deepEqual(parseQuery("10.0.0.0/33")[0].kind, "text", "an impossible CIDR is text");
  assert.deepEqual([...withNeighbours(idx, ["i-2"], [0])].sort(), ["i-1", "i-2"]);
});

test("peers: per-peer bytes from the node's point of view, heaviest first", () => {
  const idx = indexMap(load("instances-20261123"));
  const etl = idx.nodes.find((n) => n.label === "etl-prod-1");
  const rows = peersOf(idx, etl.id, null).map((r) => [r.peer.label, r.role, r.sent, r.received, r.cost]);
  assert.deepEqual(rows, [["db-prod-1", "client", 2e8, 61e9, 1.224], ["s3.us-east-1.amazonaws.com", "client", 48e9, 6e8, 4.374]]);
  const db = idx.nodes.find((n) => n.label === "db-prod-1");
  const fromDb = peersOf(idx, db.id, null).find((r) => r.peer.id === etl.id);
  assert.deepEqual([fromDb.role, fromDb.sent, fromDb.received], ["server", 61e9, 2e8]);
});

test("diff: new, gone, changed, same", () => {
  const before = load("instances-20261122");
  const after = load("instances-20261123");
  const d = diffMaps(before, after);
  assert.deepEqual(d.diff.counts, { new: 2, gone: 1, changed: 1, same: 16 });
  assert.equal(d.nodes.find((n) => n.label === "search-prod-3").diff, "new");
  const gone = d.links.find((l) => l.diff === "gone");
  assert.equal(gone.before_bytes, 12.8e9);
  // i-0e36827d400000bde <-> i-0fd510700000006eb: 40.6 GB on the 22nd, 121.8 GB on the 23rd.
  const changed = d.links.find((l) => l.diff === "changed");
  assert.deepEqual(
    [changed.before_bytes, changed.bytes_to_target + changed.bytes_to_source],
    [40.6e9, 121.8e9],
  );
  const same = diffMaps(after, after).diff.counts;
  assert.deepEqual(same, { new: 0, gone: 0, changed: 0, same: after.links.length });
});

test("formatting and parsing", () => {
  assert.equal(fmtBytes(0), "0 B");
  assert.equal(fmtBytes(999), "999 B");
  assert.equal(fmtBytes(1000), "1.00 kB");
  assert.equal(fmtBytes(61.6e9), "61.6 GB");
  assert.equal(fmtBytes(2e8), "200 MB");
  assert.equal(fmtBytes(999.6e6), "1.00 GB");
  assert.equal(fmtUsd(5.598), "$5.60");
  assert.equal(fmtUsd(0.0712), "$0.0712");
  assert.equal(fmtUsd(0), "$0.00");
  assert.equal(fmtUsd(1234.5), "$1,234.50");
  assert.equal(fmtUsd(null), "–");
  assert.equal(parseBytes("1 GB"), 1e9);
  assert.equal(parseBytes("1.5mb"), 1.5e6);
  assert.equal(parseBytes("2e3"), 2000);
  assert.equal(parseBytes("ten"), null);
  assert.equal(addDays("2026-12-31", 1), "2027-01-01");
  assert.equal(fmtSeen("2026-11-23T10:00:00.500Z", "2026-11-23T10:00:59.500Z"), "2026-11-23 10:00:00 – 10:00:59 UTC");
  assert.equal(fmtSeen("2026-11-22T23:59:00Z", "2026-11-23T00:01:00Z"), "2026-11-22 23:59:00 – 2026-11-23 00:01:00 UTC");
  assert.equal(fmtSeen(null, "2026-11-23T00:01:00Z"), null);
  const s = logScale(1e3, 1e9, 1, 7);
  assert.equal(s(1e3), 1);
  assert.equal(s(1e6), 4);
  assert.equal(s(1e12), 7, "clamped");
});

test("suppression patterns from a shared URL cannot hang the tab", () => {
  for (const bad of ["(a+)+$", "(a*)*b", "(x+x+)+y", "(a|aa)+$", "(a|a)*", "((ab)*)+", "(.*){2,}", "(\\w+\\s?)+$", "(a)\\1", "(?<x>a)\\k<x>"]) {
    assert.notEqual(regexHazard(bad), null, bad);
    assert.equal(compileRegex(bad).re, undefined, bad);
    assert.equal(typeof compileRegex(bad).error, "string", bad);
  }
  for (const good of ["^prod", "^infra/monitoring", "(prod|stage)", "^(prod|stage)?$", "(ab)+", "[(+]+", "a+b*c", "\\(a+\\)+", "(?:dev)+", "^x{2,3}$"]) {
    assert.equal(regexHazard(good), null, good);
    assert.ok(compileRegex(good).re instanceof RegExp, good);
  }
  assert.equal(regexHazard("a".repeat(MAX_REGEX_LENGTH)), null);
  assert.equal(regexHazard("a".repeat(MAX_REGEX_LENGTH + 1)), `longer than ${MAX_REGEX_LENGTH} characters`);
  // A refused pattern suppresses nothing (like an invalid one), and the check is quick.
  const t = Date.now();
  const idx = indexMap({ ...load("instances-20261123"), nodes: load("instances-20261123").nodes.map((n) => ({ ...n, env: "a".repeat(40) + "!" })) });
  assert.equal(applyFilters(idx, { envRe: "(a+)+$" }).suppressed, 0);
  assert.ok(Date.now() - t < 1000);
});

// ---- issue 11: workloads, namespaces, containers.
test("namespace grouping and search by namespace and container", () => {
  const api = node("workload:shop/api", { kind: "workload", namespace: "shop", workload_kind: "Deployment", containers: [{ id: "ab".repeat(32), name: "main", pod: "api-7d4-x1", namespace: "shop", workload: "api" }] });
  const host = node("i-1");
  assert.equal(groupKey(api, { mode: "namespace" }), "ns:shop");
  assert.equal(groupKey(host, { mode: "namespace" }), "ns:(no namespace)");
  assert.equal(groupKey(node("x", { kind: "external" }), { mode: "namespace" }), "external");
  const idx = indexMap(map([api, host], [link("workload:shop/api", "i-1", 10, 0, { service_addresses: ["10.96.0.40:443"] })]));
  const all = ["workload:shop/api", "i-1"];
  assert.deepEqual(searchNodes(idx, "ns:shop", all), ["workload:shop/api"]);
  assert.deepEqual(searchNodes(idx, "ns:other", all), []);
  assert.deepEqual(searchNodes(idx, "api-7d4", all), ["workload:shop/api"]);
  assert.deepEqual(searchNodes(idx, "abab", all), ["workload:shop/api"]);
});
