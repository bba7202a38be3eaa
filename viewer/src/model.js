// Pure logic over map documents (trafficmap-model/src/map.rs, schema trafficmap.map/v1): indexing,
// filters, grouping keys, search, the diff of two maps, scales and formatting. No DOM here, so
// `node --test` covers it.

export const MAP_SCHEMA = "trafficmap.map/v1";
export const VIEWS = ["instances", "clusters", "security-groups", "workloads"];
export const GROUPINGS = ["none", "env", "archdomain", "namespace"];

/** Envs in the order users expect them on the map (production first); others follow by name. */
const ENV_ORDER = ["prod", "production", "prd", "live", "stage", "staging", "stg", "preprod", "uat", "qa", "test", "testing", "dev", "development", "sandbox"];

export function envRank(env) {
  if (env === null || env === undefined) return [ENV_ORDER.length + 1, ""];
  const i = ENV_ORDER.indexOf(env.toLowerCase());
  return [i < 0 ? ENV_ORDER.length : i, env];
}

export function compareEnvs(a, b) {
  const [ra, na] = envRank(a);
  const [rb, nb] = envRank(b);
  return ra - rb || (na < nb ? -1 : na > nb ? 1 : 0);
}

/** Total bytes of a link, both directions. */
export const linkBytes = (l) => l.bytes_to_target + l.bytes_to_source;
export const nodeBytes = (n) => n.bytes_in + n.bytes_out;

/**
 * Checks the parts of a map the viewer relies on. Returns a list of problems (empty when fine);
 * links whose ends are missing are dropped by `indexMap` and reported here.
 */
export function checkMap(doc) {
  if (!doc || typeof doc !== "object") return ["not a JSON object"];
  if (doc.schema !== MAP_SCHEMA) return [`unsupported schema ${JSON.stringify(doc.schema)}; this viewer reads ${MAP_SCHEMA}`];
  if (!Array.isArray(doc.nodes) || !Array.isArray(doc.links)) return ["nodes or links missing"];
  const ids = new Set(doc.nodes.map((n) => n.id));
  const problems = [];
  doc.links.forEach((l, i) => {
    if (!ids.has(l.source) || !ids.has(l.target)) problems.push(`links[${i}] references a missing node`);
  });
  return problems;
}

/**
 * Index of one map: nodes by id, links with their index, and per node the links it takes part
 * in. Self-links (traffic inside one cluster or security group) are kept apart: they are shown
 * in the details, not drawn.
 */
export function indexMap(doc) {
  const byId = new Map();
  for (const n of doc.nodes) byId.set(n.id, n);
  const links = [];
  const selfLinks = [];
  const adjacency = new Map(doc.nodes.map((n) => [n.id, []]));
  for (const l of doc.links) {
    if (!byId.has(l.source) || !byId.has(l.target)) continue;
    noteServices(byId, l); // issue 12 item 4
    if (l.source === l.target) {
      selfLinks.push(l);
      continue;
    }
    const i = links.length;
    links.push(l);
    adjacency.get(l.source).push(i);
    adjacency.get(l.target).push(i);
  }
  return { doc, nodes: doc.nodes, byId, links, selfLinks, adjacency };
}

/** `online/midtier/search` at level 2 is `online/midtier`; level 0 or less keeps it whole. */
export function archPrefix(arch, level) {
  if (!arch) return null;
  if (!level || level <= 0) return arch;
  return arch.split("/").slice(0, level).join("/");
}

/** Every prefix of every archdomain (`online`, `online/midtier`, ...) with its node count. */
export function archTree(nodes) {
  const counts = new Map();
  for (const n of nodes) {
    if (!n.archdomain) continue;
    const parts = n.archdomain.split("/");
    for (let i = 1; i <= parts.length; i++) {
      const p = parts.slice(0, i).join("/");
      counts.set(p, (counts.get(p) ?? 0) + 1);
    }
  }
  return [...counts.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([prefix, count]) => ({ prefix, count, depth: prefix.split("/").length - 1 }));
}

export function envList(nodes) {
  const counts = new Map();
  for (const n of nodes) if (n.env) counts.set(n.env, (counts.get(n.env) ?? 0) + 1);
  return [...counts.keys()].sort(compareEnvs).map((env) => ({ env, count: counts.get(env) }));
}

export function maxArchDepth(nodes) {
  let d = 1;
  for (const n of nodes) if (n.archdomain) d = Math.max(d, n.archdomain.split("/").length);
  return d;
}

/** Longest suppression pattern accepted (they come from shared URLs too). */
export const MAX_REGEX_LENGTH = 200;

/**
 * Why a pattern could take exponential time, or null. The patterns come from URLs anyone can
 * share, and JavaScript's backtracking engine can hang the tab on `(a+)+$`, so the constructs
 * behind catastrophic backtracking are refused: backreferences, and a quantified group that
 * itself contains a quantifier or an alternation (nested or overlapping repetition).
 */
export function regexHazard(src) {
  if (src.length > MAX_REGEX_LENGTH) return `longer than ${MAX_REGEX_LENGTH} characters`;
  // Per open group: whether it holds a quantifier or `|` so far.
  const stack = [];
  let inClass = false;
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c === "\\") {
      const next = src[i + 1] ?? "";
      if (!inClass && (/[1-9]/.test(next) || next === "k")) return "backreferences are not supported";
      i++;
      continue;
    }
    if (inClass) {
      if (c === "]") inClass = false;
      continue;
    }
    if (c === "[") inClass = true;
    else if (c === "(") stack.push(false);
    else if (c === "|" && stack.length) stack[stack.length - 1] = true;
    else if (c === ")") {
      const risky = stack.pop() ?? false;
      const q = src[i + 1];
      if (risky && (q === "*" || q === "+" || q === "{")) return "a repeated group may not contain a repetition or an alternation";
      // The group counts as a repetition inside its enclosing group when it is quantified.
      if ((risky || q === "*" || q === "+" || q === "{") && stack.length) stack[stack.length - 1] = true;
    } else if ((c === "*" || c === "+" || c === "{") && stack.length) stack[stack.length - 1] = true;
  }
  return null;
}

/** Compiles a user regular expression; returns `{re}` or `{error}` (never throws). */
export function compileRegex(src) {
  if (!src) return { re: null };
  const hazard = regexHazard(src);
  if (hazard) return { error: hazard };
  try {
    return { re: new RegExp(src, "i") };
  } catch (e) {
    return { error: e.message };
  }
}

function underPrefix(arch, prefixes) {
  if (!arch) return false;
  for (const p of prefixes) if (arch === p || arch.startsWith(p + "/")) return true;
  return false;
}

/**
 * The env or archdomain a suppression pattern is matched against (issue 12, as the old tool
 * wrote them): the node's own value; for an external address without one, `external`; for any
 * other node without one (untagged), `unknown`. So `^external$` and `unknown` suppress them.
 */
export function facet(n, key) {
  const v = n[key];
  if (v) return v;
  return n.kind === "external" ? "external" : "unknown";
}

/**
 * Applies the suppression and minimum-bytes filters.
 *
 * A node is suppressed when its env or archdomain is unticked, or matches a suppression regex
 * (see `facet`: external and untagged nodes match `external` and `unknown`). Suppression takes
 * the node's links away, which keeps monitoring or backup hosts that talk to everyone from tying
 * the whole map together. With `hideNodes` (the default) the suppressed nodes go too; without
 * it they stay on the map, unlinked, as the old tool drew them, and so do nodes whose links all
 * went to suppression. Links under `minBytes` are hidden; a node that loses every link to that
 * filter is hidden too, while nodes that had no link in the map stay. In a diff, `onlyChanges`
 * hides links that did not change.
 */
export function applyFilters(index, f) {
  const hideEnvs = new Set(f.hideEnvs ?? []);
  const hideArchs = f.hideArchs ?? [];
  const envRe = compileRegex(f.envRe).re;
  const archRe = compileRegex(f.archRe).re;
  const minBytes = f.minBytes ?? 0;
  const onlyChanges = !!f.onlyChanges;
  const hideNodes = f.hideNodes ?? true;
  const suppressed = new Set();
  for (const n of index.nodes) {
    if (
      (n.env && hideEnvs.has(n.env)) ||
      underPrefix(n.archdomain, hideArchs) ||
      (envRe && envRe.test(facet(n, "env"))) ||
      (archRe && archRe.test(facet(n, "archdomain")))
    ) {
      suppressed.add(n.id);
    }
  }
  const links = [];
  let belowMin = 0;
  const linked = new Set();
  // Nodes with a link that suppression left: only those can lose their links to the filters.
  const unsuppressedLinks = new Set();
  for (let i = 0; i < index.links.length; i++) {
    const l = index.links[i];
    if (suppressed.has(l.source) || suppressed.has(l.target)) continue;
    unsuppressedLinks.add(l.source);
    unsuppressedLinks.add(l.target);
    if (onlyChanges && l.diff === "same") continue;
    if (linkBytes(l) < minBytes) {
      belowMin++;
      continue;
    }
    links.push(i);
    linked.add(l.source);
    linked.add(l.target);
  }
  const nodes = [];
  for (const n of index.nodes) {
    if (hideNodes) {
      if (suppressed.has(n.id)) continue;
      const hadLinks = index.adjacency.get(n.id).length > 0;
      if (hadLinks && !linked.has(n.id)) continue;
    } else if (unsuppressedLinks.has(n.id) && !linked.has(n.id)) continue;
    nodes.push(n.id);
  }
  return { nodes, links, suppressed: suppressed.size, belowMin };
}

/**
 * What an export of the screen covers (the collector's `POST /api/v1/maps/export` body): the
 * nodes shown and the links shown as `[source, target]` pairs, one per pair, plus each shown
 * node's traffic with itself (a cluster's internal traffic, shown in its details).
 */
export function visibleSubset(index, filtered) {
  const shown = new Set(filtered.nodes);
  const seen = new Set();
  const links = [];
  const add = (l) => {
    const k = `${l.source}\u0000${l.target}`;
    if (seen.has(k)) return;
    seen.add(k);
    links.push([l.source, l.target]);
  };
  for (const i of filtered.links) add(index.links[i]);
  for (const l of index.selfLinks) if (shown.has(l.source)) add(l);
  return { nodes: [...filtered.nodes], links };
}

/** What node sizes can follow. */
export const SIZE_BY = ["bytes", "price"];

/** A node's price per hour when it has a positive one, else null (sized smallest). */
export function nodePrice(n) {
  const p = n.price_per_hour;
  return typeof p === "number" && Number.isFinite(p) && p > 0 ? p : null;
}

/**
 * The raw size of each node (before crowded maps shrink it), between `min` and `max`: by bytes
 * in+out on a log scale between the smallest and the largest non-zero (as before), or by price
 * with the area proportional to the price per hour (a cluster's price is its members' sum, as
 * the collector writes it), the priciest at `max`. Nodes without a price get `min`.
 * Returns `{ size(n), lo, hi, unpriced }`: the range of values sized, and how many nodes had no
 * price.
 */
export function sizeScale(nodes, by, min, max) {
  if (by === "price") {
    let lo = Infinity, hi = 0, unpriced = 0;
    for (const n of nodes) {
      const p = nodePrice(n);
      if (p === null) unpriced++;
      else {
        lo = Math.min(lo, p);
        hi = Math.max(hi, p);
      }
    }
    const size = (n) => {
      const p = nodePrice(n);
      return p === null || hi === 0 ? min : min + (max - min) * Math.sqrt(p / hi);
    };
    return { size, lo, hi, unpriced };
  }
  let lo = Infinity, hi = 0;
  for (const n of nodes) {
    const b = nodeBytes(n);
    if (b > 0) {
      lo = Math.min(lo, b);
      hi = Math.max(hi, b);
    }
  }
  const raw = logScale(Number.isFinite(lo) ? lo : 1, hi, min, max);
  return { size: (n) => raw(nodeBytes(n)), lo, hi, unpriced: 0 };
}

/** The key of the group a node is pulled towards, or null when ungrouped. */
export function groupKey(node, grouping) {
  if (!grouping || grouping.mode === "none") return null;
  if (node.kind === "external") return "external";
  if (grouping.mode === "env") return `env:${node.env ?? "(no env)"}`;
  // issue 11: Kubernetes namespaces (workload nodes carry theirs; hosts have none).
  if (grouping.mode === "namespace") return `ns:${node.namespace ?? "(no namespace)"}`;
  const arch = archPrefix(node.archdomain, grouping.level) ?? "(no archdomain)";
  return grouping.splitEnv ? `arch:${arch}|${node.env ?? "(no env)"}` : `arch:${arch}`;
}

/** Human label of a group key. */
export function groupLabel(key) {
  if (key === "external") return "external";
  if (key.startsWith("env:")) return key.slice(4);
  if (key.startsWith("ns:")) return key.slice(3); // issue 11
  const [arch, env] = key.slice(5).split("|");
  return env === undefined ? arch : `${arch} · ${env}`;
}

/** The env a group stands for (to colour it), if any. */
export function groupEnv(key) {
  if (key.startsWith("env:")) return key.slice(4);
  if (key.startsWith("arch:") && key.includes("|")) return key.split("|")[1];
  return null;
}

/** Sort order of groups: by env (production first), then archdomain, external last. */
export function compareGroups(a, b) {
  if (a === b) return 0;
  if (a === "external") return 1;
  if (b === "external") return -1;
  const ea = groupEnv(a);
  const eb = groupEnv(b);
  const c = compareEnvs(ea, eb);
  if (c !== 0 && (ea !== null || eb !== null)) return c;
  return a < b ? -1 : 1;
}

function ipToInt(s) {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return null;
  const p = m.slice(1).map(Number);
  if (p.some((x) => x > 255)) return null;
  return ((p[0] << 24) >>> 0) + (p[1] << 16) + (p[2] << 8) + p[3];
}

/**
 * Parses a search query into terms. Each whitespace-separated term must match (AND):
 * `10.1.0.0/16` (IPv4 CIDR), `:9200` or `port:9200` (server port), `env:prod`, `arch:online/midtier`,
 * `proc:nginx`, `type:m5.large`, `ns:shop` (issue 11: Kubernetes namespace); anything else matches
 * as a case-insensitive substring of the label, id, addresses, processes, archdomain, env, instance
 * type, security groups, or a container's id, name or pod.
 */
export function parseQuery(q) {
  const terms = [];
  for (const raw of (q ?? "").trim().split(/\s+/)) {
    if (!raw) continue;
    let m;
    if ((m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(raw))) {
      const base = ipToInt(m[1]);
      const bits = Number(m[2]);
      if (base !== null && bits <= 32) {
        const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
        terms.push({ kind: "cidr", net: (base & mask) >>> 0, mask });
        continue;
      }
    }
    if ((m = /^(?:port)?:(\d{1,5})$/i.exec(raw))) {
      terms.push({ kind: "port", port: Number(m[1]) });
      continue;
    }
    if ((m = /^(env|arch|proc|type|sg|ns):(.+)$/i.exec(raw))) {
      terms.push({ kind: m[1].toLowerCase(), text: m[2].toLowerCase() });
      continue;
    }
    terms.push({ kind: "text", text: raw.toLowerCase() });
  }
  return terms;
}

function termMatches(n, t) {
  const lc = (s) => (s ?? "").toLowerCase();
  switch (t.kind) {
    case "cidr":
      return n.addresses.some((a) => {
        const v = ipToInt(a);
        return v !== null && ((v & t.mask) >>> 0) === t.net;
      });
    case "port":
      return n.server_ports.includes(t.port);
    case "env":
      return lc(n.env) === t.text;
    case "arch":
      return lc(n.archdomain) === t.text || lc(n.archdomain).startsWith(t.text + "/");
    case "proc":
      return n.processes.some((p) => lc(p).includes(t.text));
    case "type":
      return lc(n.instance_type) === t.text;
    case "sg":
      return n.security_groups.some((g) => lc(g).includes(t.text));
    case "ns": // issue 11
      return lc(n.namespace) === t.text || (n.containers ?? []).some((c) => lc(c.namespace) === t.text);
    default:
      return (
        lc(n.label).includes(t.text) ||
        lc(n.id).includes(t.text) ||
        lc(n.archdomain).includes(t.text) ||
        lc(n.env) === t.text ||
        lc(n.instance_type) === t.text ||
        n.addresses.some((a) => lc(a).includes(t.text)) ||
        n.processes.some((p) => lc(p).includes(t.text)) ||
        n.security_groups.some((g) => lc(g).includes(t.text)) ||
        servesNamed(n, t.text) || // issue 12 item 4
        (n.containers ?? []).some((c) => c.id.startsWith(t.text) || lc(c.name).includes(t.text) || lc(c.pod).includes(t.text)) // issue 11
      );
  }
}

// ---- issue 12 item 4 (service names): a node matches a search for a service it serves
// ("postgresql"), named by the links' `services` (parallel to `server_ports`, absent in older
// maps); indexMap records them per server node.
const servedNames = new WeakMap();
function noteServices(byId, l) {
  if (!Array.isArray(l.services)) return;
  const n = byId.get(l.target);
  let set = servedNames.get(n);
  if (!set) servedNames.set(n, (set = new Set()));
  for (const s of l.services) if (typeof s === "string" && s) set.add(s.toLowerCase());
}
function servesNamed(n, text) {
  for (const s of servedNames.get(n) ?? []) if (s.includes(text)) return true;
  return false;
}
// ---- end issue 12 item 4 ----

/** Ids of the nodes (among `candidates`) that match every term of the query. */
export function searchNodes(index, query, candidates) {
  const terms = parseQuery(query);
  if (terms.length === 0) return [];
  const out = [];
  for (const id of candidates) {
    const n = index.byId.get(id);
    if (n && terms.every((t) => termMatches(n, t))) out.push(id);
  }
  return out;
}

/** The given nodes and their neighbours over the given (visible) links. */
export function withNeighbours(index, ids, visibleLinks) {
  const set = new Set(ids);
  const out = new Set(ids);
  for (const i of visibleLinks) {
    const l = index.links[i];
    if (set.has(l.source)) out.add(l.target);
    if (set.has(l.target)) out.add(l.source);
  }
  return out;
}

/**
 * Per-peer traffic of one node over the visible links, heaviest first: what it sent to and
 * received from each peer, on which server ports, in which role, at what transfer cost.
 */
export function peersOf(index, id, visibleLinks) {
  const rows = [];
  const visible = visibleLinks ? new Set(visibleLinks) : null;
  for (const i of index.adjacency.get(id) ?? []) {
    if (visible && !visible.has(i)) continue;
    const l = index.links[i];
    const asClient = l.source === id;
    const peer = index.byId.get(asClient ? l.target : l.source);
    rows.push({
      peer,
      role: asClient ? "client" : "server",
      sent: asClient ? l.bytes_to_target : l.bytes_to_source,
      received: asClient ? l.bytes_to_source : l.bytes_to_target,
      ports: l.server_ports,
      connections: l.connections,
      cost: l.cost_usd,
      link: l,
    });
  }
  rows.sort((a, b) => b.sent + b.received - (a.sent + a.received) || (a.peer.label < b.peer.label ? -1 : 1));
  return rows;
}

export const linkKey = (l) => `${l.source}\u2192${l.target}`;

/**
 * Diff of two maps of the same view: a map document with every node and link of either, each
 * tagged `diff`: `new` (only in `after`), `gone` (only in `before`), `changed` (bytes moved by
 * at least `ratio` times either way) or `same`. Values are those of `after` where the item
 * exists there, else of `before`; `before_bytes` keeps the old link total.
 */
export function diffMaps(before, after, ratio = 2) {
  const beforeNodes = new Map(before.nodes.map((n) => [n.id, n]));
  const afterNodes = new Map(after.nodes.map((n) => [n.id, n]));
  const nodes = [];
  for (const n of after.nodes) nodes.push({ ...n, diff: beforeNodes.has(n.id) ? "same" : "new" });
  for (const n of before.nodes) if (!afterNodes.has(n.id)) nodes.push({ ...n, diff: "gone" });
  const beforeLinks = new Map(before.links.map((l) => [linkKey(l), l]));
  const afterLinks = new Set(after.links.map(linkKey));
  const links = [];
  const counts = { new: 0, gone: 0, changed: 0, same: 0 };
  for (const l of after.links) {
    const old = beforeLinks.get(linkKey(l));
    let diff = "new";
    if (old) {
      const a = Math.max(linkBytes(old), 1);
      const b = Math.max(linkBytes(l), 1);
      diff = b / a >= ratio || a / b >= ratio ? "changed" : "same";
    }
    counts[diff]++;
    links.push({ ...l, diff, before_bytes: old ? linkBytes(old) : 0 });
  }
  for (const l of before.links) {
    if (afterLinks.has(linkKey(l))) continue;
    counts.gone++;
    links.push({ ...l, diff: "gone", before_bytes: linkBytes(l) });
  }
  return {
    ...after,
    nodes,
    links,
    diff: { before: { from: before.from, to: before.to }, after: { from: after.from, to: after.to }, counts },
  };
}

/** Log scale from [lo, hi] (values > 0) onto [a, b]; values outside are clamped. */
export function logScale(lo, hi, a, b) {
  const l0 = Math.log10(Math.max(lo, 1));
  const l1 = Math.log10(Math.max(hi, lo + 1, 2));
  const span = l1 - l0 || 1;
  return (v) => {
    const t = (Math.log10(Math.max(v, 1)) - l0) / span;
    return a + (b - a) * Math.min(1, Math.max(0, t));
  };
}

const UNITS = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];

/** Bytes in SI units with three significant digits: `38.5 GB`, `512 B`. */
export function fmtBytes(b) {
  if (!Number.isFinite(b)) return "–";
  let v = Math.abs(b);
  let u = 0;
  while (v >= 999.5 && u < UNITS.length - 1) {
    v /= 1000;
    u++;
  }
  const s = u === 0 ? String(Math.round(v)) : v >= 99.95 ? v.toFixed(0) : v >= 9.995 ? v.toFixed(1) : v.toFixed(2);
  return `${b < 0 ? "-" : ""}${s} ${UNITS[u]}`;
}

/** Parses `500MB`, `1.5 GB`, `2e9`, `10k` into bytes (SI); null when unreadable. */
export function parseBytes(s) {
  const m = /^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgtp]?)b?\s*$/i.exec(s ?? "");
  if (!m) return null;
  const mult = { "": 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12, p: 1e15 }[m[2].toLowerCase()];
  return Math.round(Number(m[1]) * mult);
}

/** USD with cents, or more digits for small amounts: `$12.34`, `$0.0416`. */
export function fmtUsd(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  if (x !== 0 && Math.abs(x) < 1) return `$${Number(x.toPrecision(3))}`;
  return `$${x.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
}

export function fmtCount(x) {
  return Math.round(x).toLocaleString("en-US");
}

/** When a link was seen: `2026-11-23 10:00:00 – 10:00:59 UTC` (the date once if the same). */
export function fmtSeen(first, last) {
  if (!first || !last) return null;
  const t = (s) => s.replace("T", " ").replace(/(\.\d+)?Z$/, "");
  const a = t(first);
  const b = t(last);
  return `${a} – ${a.slice(0, 10) === b.slice(0, 10) ? b.slice(11) : b} UTC`;
}

/** `2026-11-23` plus `n` days. */
export function addDays(day, n) {
  const t = Date.parse(`${day}T00:00:00Z`) + n * 86400e3;
  return new Date(t).toISOString().slice(0, 10);
}
