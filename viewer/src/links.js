// Issue 14 items 2 and 3 (v14-links): links that aggregate and a "top N links" default, as pure
// functions the app (main.js), the tests and the exports share.
//
// - Bundles: zoomed out (camera ratio above BUNDLE_RATIO) with a grouping, the links between two
//   collapsed groups are drawn as one bundle per pair of groups (both directions together), its
//   bytes the saturating sum of its links' bytes and its count the number of links; links inside
//   a collapsed group are faded. An expanded group (zoomed in past the threshold: all of them;
//   otherwise the selected group, or the group of the selected node) shows its hosts' own links.
// - Top N: above TOP_N_ABOVE links only the TOP_N biggest links (bytes, ties by link order) are
//   drawn, and at most TOP_N bundles; the rest is one click away (state `top=all`).

import { compareGroups } from "./model.js";

/** Camera ratio (1 = the whole map) above which groups are collapsed into bundles. */
export const BUNDLE_RATIO = 0.6;
/** `bundle=auto` bundles maps with more drawn links than this (small maps read well as they are). */
export const BUNDLE_AUTO_LINKS = 300;
/** The "top N links" default: N, and the number of links above which it applies. */
export const TOP_N = 500;
export const TOP_N_ABOVE = 2000;
/** Largest `top=N` a URL may ask for. */
export const TOP_MAX = 1_000_000;
/** Widest bundle (pixels at ratio 1): the link width scale goes on past its top for sums, to here. */
export const BUNDLE_MAX_WIDTH = 16;
/** Links listed in a bundle's tooltip. */
export const BUNDLE_TOP_LINKS = 10;

const SAT = Number.MAX_SAFE_INTEGER;
const satAdd = (a, b) => Math.min(SAT, a + b);

/** How many links to draw (null: all), from the state's `top` ("auto", "all" or a number). */
export function linkLimit(total, top) {
  if (top === "all") return null;
  if (top === "auto" || top === undefined || top === null) return total > TOP_N_ABOVE ? TOP_N : null;
  const n = Math.floor(Number(top));
  if (!Number.isFinite(n) || n < 1) return null;
  return Math.min(n, TOP_MAX);
}

/** Whether links are bundled at all for `bundle` ("auto", "on", "off") with this many links. */
export function bundlingOn(bundle, grouped, total) {
  if (!grouped || bundle === "off") return false;
  return bundle === "on" || total > BUNDLE_AUTO_LINKS;
}

/**
 * The items hidden by a top-N limit: `items` [{key, bytes}] in their natural order; returns the
 * set of keys beyond the `n` biggest (bytes descending, ties by position), empty when `n` is null.
 */
export function topHidden(items, n) {
  const hidden = new Set();
  if (n === null || items.length <= n) return hidden;
  // The n-th biggest byte count by a native numeric sort (a comparator sort of 50,000 objects
  // takes several times longer); above it everything stays, at it the earliest ones.
  // Byte counts that are not finite numbers count as 0 (a hostile map cannot upset the cut).
  const bytes = Float64Array.from(items, (it) => (Number.isFinite(it.bytes) ? it.bytes : 0));
  const sorted = bytes.slice().sort();
  const cut = sorted[sorted.length - n];
  let above = 0;
  for (const b of bytes) if (b > cut) above++;
  let atCut = n - above;
  items.forEach((it, i) => {
    if (bytes[i] > cut) return;
    if (bytes[i] === cut && atCut > 0) atCut--;
    else hidden.add(it.key);
  });
  return hidden;
}

/**
 * Bundles of `links` [{i, source, target, bytes}] (self-links are skipped) between collapsed
 * groups: `groupOf` maps node ids to group keys (ungrouped nodes have none), `expanded` holds
 * the groups that show their own links. Returns { bundles: [{key, source, target, count, bytes,
 * links: [i...]}] (source before target in group order, biggest first), bundled: Set of the
 * links' `i` that a bundle stands for, faded: Set of the `i` inside one collapsed group }.
 */
export function buildBundles(links, groupOf, expanded) {
  const byKey = new Map();
  const all = [];
  const bundled = new Set();
  const faded = new Set();
  for (const l of links) {
    if (l.source === l.target) continue;
    const a = groupOf.get(l.source);
    const b = groupOf.get(l.target);
    if (a === undefined || b === undefined || expanded.has(a) || expanded.has(b)) continue;
    if (a === b) {
      faded.add(l.i);
      continue;
    }
    // Nested maps: no string key or group comparison per link, only per new pair.
    let row = byKey.get(a);
    if (!row) byKey.set(a, (row = new Map()));
    let bu = row.get(b);
    if (!bu) {
      bu = byKey.get(b)?.get(a);
      if (!bu) {
        const [s, t] = compareGroups(a, b) < 0 ? [a, b] : [b, a];
        all.push((bu = { key: `${s}\u0000${t}`, source: s, target: t, count: 0, bytes: 0, links: [] }));
      }
      row.set(b, bu);
    }
    bu.count++;
    bu.bytes = satAdd(bu.bytes, Number.isFinite(l.bytes) ? Math.max(0, l.bytes) : 0);
    bu.links.push(l.i);
    bundled.add(l.i);
  }
  const bundles = all.sort((x, y) => y.bytes - x.bytes || (x.key < y.key ? -1 : 1));
  return { bundles, bundled, faded };
}

/**
 * A bundle's width on the links' own log scale (`lo`, `hi`: the links' byte range mapped to
 * `min`..`max`, times `density` as the scene does), continued past `max` for sums bigger than
 * any link, up to BUNDLE_MAX_WIDTH.
 */
export function bundleWidth(bytes, { lo, hi, min, max, density }) {
  const l0 = Math.log10(Math.max(lo, 1));
  const l1 = Math.log10(Math.max(hi, lo + 1, 2));
  const t = (Math.log10(Math.max(bytes, 1)) - l0) / (l1 - l0 || 1);
  const w = (min + (max - min) * Math.max(0, t)) * Math.max(density, 0.25);
  return Math.min(BUNDLE_MAX_WIDTH, Math.max(0.5, w));
}

/** The biggest links of a bundle for its tooltip: [{i, bytes}], at most `k`, biggest first. */
export function topLinksOf(bundle, bytesOf, k = BUNDLE_TOP_LINKS) {
  return bundle.links
    .map((i) => ({ i, bytes: bytesOf(i) }))
    .sort((a, b) => b.bytes - a.bytes || a.i - b.i)
    .slice(0, k);
}

/** Distance from point p to segment a-b (viewport pixels), for hovering a bundle. */
export function segmentDistance(p, a, b) {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const len2 = dx * dx + dy * dy;
  const u = len2 === 0 ? 0 : Math.max(0, Math.min(1, ((p.x - a.x) * dx + (p.y - a.y) * dy) / len2));
  return Math.hypot(a.x + u * dx - p.x, a.y + u * dy - p.y);
}

/** Whether point p lies inside polygon `poly` ([[x, y], ...]), by ray casting. */
export function pointInPolygon(p, poly) {
  let inside = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i];
    const [xj, yj] = poly[j];
    if (yi > p.y !== yj > p.y && p.x < ((xj - xi) * (p.y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}
