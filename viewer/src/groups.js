// Group regions: the convex hull of each group's members, padded, drawn under the edges with the
// group's name, so the env and archdomain grouping reads at a glance.

import { groupColor } from "./scene.js";
import { groupEnv, groupLabel } from "./model.js";
import { withAlpha } from "./colors.js";

/** Andrew's monotone chain; points as [x, y]; returns the hull counter-clockwise. */
export function convexHull(points) {
  const pts = points.slice().sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  if (pts.length <= 2) return pts;
  const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const lower = [];
  for (const p of pts) {
    while (lower.length >= 2 && cross(lower[lower.length - 2], lower[lower.length - 1], p) <= 0) lower.pop();
    lower.push(p);
  }
  const upper = [];
  for (let i = pts.length - 1; i >= 0; i--) {
    const p = pts[i];
    while (upper.length >= 2 && cross(upper[upper.length - 2], upper[upper.length - 1], p) <= 0) upper.pop();
    upper.push(p);
  }
  upper.pop();
  lower.pop();
  return lower.concat(upper);
}

/** Hull vertices (graph coordinates) per group key, from member positions. */
export function groupHulls(graph, groupOf) {
  const members = new Map();
  graph.forEachNode((key, a) => {
    const g = groupOf.get(key);
    if (!g) return;
    if (!members.has(g)) members.set(g, []);
    members.get(g).push([a.x, a.y, a.size]);
  });
  const out = [];
  for (const [key, pts] of members) out.push({ key, count: pts.length, hull: convexHull(pts.map(([x, y]) => [x, y])), maxSize: Math.max(...pts.map((p) => p[2])) });
  return out;
}

const RING = Array.from({ length: 10 }, (_, i) => [Math.cos((i / 10) * 2 * Math.PI), Math.sin((i / 10) * 2 * Math.PI)]);

/**
 * Draws the hulls through a paint target (canvas or SVG) with a view transform. The padding is
 * in pixels (a Minkowski sum with a small disc), so regions stay readable at every zoom.
 * Outlines go under the links and names over everything, hence the two switches.
 */
export function drawGroups(target, hulls, toViewport, scaleSize, pal, { outlines = true, names = true } = {}) {
  const labels = [];
  for (const h of hulls) {
    const pad = scaleSize(h.maxSize) + 10;
    const ring = [];
    for (const [x, y] of h.hull) {
      const p = toViewport({ x, y });
      for (const [cx, cy] of RING) ring.push([p.x + cx * pad, p.y + cy * pad]);
    }
    const poly = convexHull(ring);
    const color = groupColor(groupEnv(h.key), pal);
    if (outlines) target.polygon(poly, withAlpha(color, 0.07), withAlpha(color, 0.45), 1.2, [5, 4]);
    let top = Infinity, sx = 0;
    for (const [x, y] of poly) {
      top = Math.min(top, y);
      sx += x;
    }
    labels.push([sx / poly.length, top - 4, `${groupLabel(h.key)} (${h.count})`, color, h.count]);
  }
  // Biggest groups name themselves first; a label that would overlap a placed one is left out
  // (zooming in makes room for it).
  if (!names) return;
  labels.sort((a, b) => b[4] - a[4]);
  const placed = [];
  for (const [x, y, text, color] of labels) {
    const w = target.measure(text, 13, "600");
    const box = [x - w / 2, y - 16, x + w / 2, y];
    if (placed.some((b) => box[0] < b[2] && box[2] > b[0] && box[1] < b[3] && box[3] > b[1])) continue;
    placed.push(box);
    target.text(x, y, text, { size: 13, weight: "600", color: shadeText(color), halo: "#f7f8fae0", align: "center", baseline: "bottom" });
  }
}

// Group names in a darker version of the group colour, for contrast on the light background.
function shadeText(hex) {
  const n = parseInt(hex.slice(1, 7), 16);
  const c = (v) => Math.round(v * 0.6);
  return `#${((1 << 24) | (c((n >> 16) & 255) << 16) | (c((n >> 8) & 255) << 8) | c(n & 255)).toString(16).slice(1)}`;
}

// ---------------------------------------------------------------- issue 14, item 1: regions

/** Vertices of the polygon drawn for a region: inscribed in its circle, so disjoint circles give disjoint polygons. */
const REGION_SIDES = 96;

/**
 * Region outlines from the layout's packed circles: `regions` is [x, y, r] per group key (in
 * `keys` order), then per parent key (`parentKeys`, the envs when split by env). Returns the
 * entries drawGroups and the hooks use: {key, count, circle: {x, y, r}, parent: bool}.
 */
export function regionHulls(graph, groupOf, keys, parentKeys, regions) {
  const count = new Map();
  graph.forEachNode((id) => {
    const g = groupOf.get(id);
    if (g) count.set(g, (count.get(g) ?? 0) + 1);
  });
  const out = [];
  keys.forEach((key, g) => {
    if (!count.has(key)) return;
    out.push({ key, count: count.get(key), circle: { x: regions[3 * g], y: regions[3 * g + 1], r: regions[3 * g + 2] }, parent: false });
  });
  parentKeys.forEach((key, p) => {
    const o = 3 * (keys.length + p);
    let c = 0;
    for (const h of out) if (!h.parent && groupEnv(h.key) === groupEnv(key)) c += h.count;
    if (c > 0) out.push({ key, count: c, circle: { x: regions[o], y: regions[o + 1], r: regions[o + 2] }, parent: true });
  });
  return out;
}

/** A region's outline in viewport pixels. */
export function regionPolygon(circle, toViewport) {
  const c = toViewport({ x: circle.x, y: circle.y });
  const e = toViewport({ x: circle.x + circle.r, y: circle.y });
  const r = Math.hypot(e.x - c.x, e.y - c.y);
  const poly = [];
  for (let i = 0; i < REGION_SIDES; i++) {
    const a = (i / REGION_SIDES) * 2 * Math.PI;
    poly.push([c.x + Math.cos(a) * r, c.y + Math.sin(a) * r]);
  }
  return { poly, cx: c.x, cy: c.y, r };
}

/**
 * Draws region outlines (parents first, fainter, then groups) and returns what was drawn:
 * [{key, polygon, circle: {x, y, r} in pixels, count, parent}].
 */
export function drawRegionOutlines(target, hulls, toViewport, pal) {
  const drawn = [];
  const ordered = hulls.filter((h) => h.parent).concat(hulls.filter((h) => !h.parent));
  for (const h of ordered) {
    const { poly, cx, cy, r } = regionPolygon(h.circle, toViewport);
    const color = groupColor(groupEnv(h.key), pal);
    if (h.parent) target.polygon(poly, withAlpha(color, 0.03), withAlpha(color, 0.6), 1.6, null);
    else target.polygon(poly, withAlpha(color, 0.07), withAlpha(color, 0.45), 1.2, [5, 4]);
    drawn.push({ key: h.key, polygon: poly, circle: { x: cx, y: cy, r }, count: h.count, parent: h.parent, color });
  }
  return drawn;
}

export { shadeText };
