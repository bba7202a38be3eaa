// Issue 14, items 1 and 4: the labels of the map, placed so that none overlaps another. One pass
// per drawn frame, in viewport pixels, for both renderers (sigma's own labels are off) and the
// exports: the labels of marked nodes (the selection, search hits) first, then group names
// (each at the first of a few spots around its outline that covers no node and no placed label;
// none fits: not drawn), then node labels by importance (traffic, then degree, precomputed
// per scene), each only where it fits and at most one per cell of a coarse grid, so that more
// appear as one zooms in. Returns every label drawn as {id | group, x, y, w, h} (the hooks'
// `drawnLabels()`).

import { groupLabel } from "./model.js";
import { shadeText } from "./groups.js";

const NODE_FONT = 12;
const NODE_H = 16;
const GROUP_FONT = 13;
const GROUP_H = 17;
/** Unforced labels need a node drawn at least this big (pixels radius). */
const MIN_RADIUS = 3;
/** At most one unforced node label per cell of this size (as sigma's label grid). */
const CELL_W = 140;
const CELL_H = 40;

const overlaps = (a, b) => a.x < b.x + b.w && a.x + a.w > b.x && a.y < b.y + b.h && a.y + a.h > b.y;

/** Uniform grid over boxes, for collision queries. */
class BoxGrid {
  constructor(cell = 64) {
    this.cell = cell;
    this.cells = new Map();
  }
  keys(b, fn) {
    const c = this.cell;
    for (let gx = Math.floor(b.x / c); gx <= Math.floor((b.x + b.w) / c); gx++) for (let gy = Math.floor(b.y / c); gy <= Math.floor((b.y + b.h) / c); gy++) fn(gx * 100003 + gy);
  }
  add(b) {
    this.keys(b, (k) => {
      let l = this.cells.get(k);
      if (!l) this.cells.set(k, (l = []));
      l.push(b);
    });
  }
  hits(b, test = overlaps) {
    let hit = false;
    this.keys(b, (k) => {
      if (!hit) for (const o of this.cells.get(k) ?? []) if (test(b, o)) return (hit = true);
    });
    return hit;
  }
}

/** Whether a box and a node disc (as a box {x, y, w, h, cx, cy, r}) overlap. */
const boxDisc = (b, d) => {
  const px = Math.max(b.x, Math.min(d.cx, b.x + b.w));
  const py = Math.max(b.y, Math.min(d.cy, b.y + b.h));
  return (px - d.cx) ** 2 + (py - d.cy) ** 2 < d.r * d.r;
};

/**
 * Places and draws the labels. `nodes`: [{id, x, y, r, label, forced, marked}] of the nodes
 * drawn (viewport pixels); `order`: node ids by importance; `outlines`: what
 * drawRegionOutlines drew; `width`, `height`: the viewport.
 */
export function drawLabels(target, { nodes, order, outlines, width, height }) {
  const drawn = [];
  const placed = new BoxGrid();
  const discs = new BoxGrid(32);
  const byId = new Map();
  for (const n of nodes) {
    byId.set(n.id, n);
    if (n.x + n.r < 0 || n.y + n.r < 0 || n.x - n.r > width || n.y - n.r > height) continue;
    discs.add({ x: n.x - n.r, y: n.y - n.r, w: 2 * n.r, h: 2 * n.r, cx: n.x, cy: n.y, r: n.r });
  }
  const inside = (b) => b.x >= 0 && b.y >= 0 && b.x + b.w <= width && b.y + b.h <= height;
  const nodeBox = (n) => ({ x: n.x + n.r + 3, y: n.y - NODE_H / 2, w: target.measure(n.label, NODE_FONT, "500"), h: NODE_H });
  const putNode = (n, b) => {
    placed.add(b);
    target.text(b.x, n.y, n.label, { size: NODE_FONT, color: "#1f2937", halo: "#ffffffd0" });
    drawn.push({ id: n.id, x: b.x, y: b.y, w: b.w, h: b.h });
  };
  // 1. Marked nodes.
  for (const n of nodes) {
    if (!n.marked || !n.label || n.x < 0 || n.y < 0 || n.x > width || n.y > height) continue;
    const b = nodeBox(n);
    if (inside(b) && !placed.hits(b)) putNode(n, b);
  }
  // 2. Group names: parents first, then bigger groups first.
  const groups = outlines.slice().sort((a, b) => (b.parent ? 1 : 0) - (a.parent ? 1 : 0) || b.count - a.count || (a.key < b.key ? -1 : 1));
  for (const o of groups) {
    const text = `${groupLabel(o.key)} (${o.count})`;
    const w = target.measure(text, GROUP_FONT, "600");
    const { x: cx, y: cy, r } = o.circle;
    const spots = [
      [cx - w / 2, cy - r - 3 - GROUP_H], // above
      [cx - w / 2, cy - r + 4], // inside, at the top
      [cx - w / 2, cy + r + 3], // below
      [cx - w / 2, cy + r - 4 - GROUP_H], // inside, at the bottom
      [cx + r + 4, cy - GROUP_H / 2], // right
      [cx - r - 4 - w, cy - GROUP_H / 2], // left
      [cx - w / 2, cy - GROUP_H / 2], // the middle
    ];
    for (const [x, y] of spots) {
      const b = { x, y, w, h: GROUP_H };
      if (!inside(b) || placed.hits(b) || discs.hits(b, boxDisc)) continue;
      placed.add(b);
      target.text(x + w / 2, y + GROUP_H - 2, text, { size: GROUP_FONT, weight: "600", color: shadeText(o.color), halo: "#f7f8fae0", align: "center", baseline: "bottom" });
      drawn.push({ group: o.key, x, y, w, h: GROUP_H });
      break;
    }
  }
  // 3. Other node labels by importance: forced ones (a focused neighbourhood) first.
  const cells = new Set();
  const tryNode = (n, forced) => {
    if (!n || n.marked || !n.label || n.done) return;
    if (!forced && n.r < MIN_RADIUS) return;
    if (n.x < 0 || n.y < 0 || n.x > width || n.y > height) return;
    const cell = Math.floor(n.x / CELL_W) * 100003 + Math.floor(n.y / CELL_H);
    if (!forced && cells.has(cell)) return;
    const b = nodeBox(n);
    if (!inside(b) || placed.hits(b)) return;
    cells.add(cell);
    n.done = true;
    putNode(n, b);
  };
  for (const id of order) {
    const n = byId.get(id);
    if (n?.forced) tryNode(n, true);
  }
  for (const id of order) tryNode(byId.get(id), false);
  return drawn;
}
