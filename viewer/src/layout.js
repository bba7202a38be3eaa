// The force layout: ForceAtlas2 (graphology-layout-forceatlas2's iteration over flat matrices)
// plus grouping. Runs in a web worker (layout-worker.js), or on the main thread when workers are
// unavailable; pure, so node's test runner covers it.
//
// Grouping is done inside FA2 itself: each group gets a fixed "anchor" node at its focus
// position and every member a virtual edge to it. Anchors weigh (almost) nothing, so they
// attract without repelling. Focus positions are packed in rows in group order (production
// first, archdomains alphabetically), and re-packed a few times from the measured group sizes
// so that groups neither overlap nor drift apart.
//
// Issue 14, item 1 (the default, `packing: "regions"`): groups are laid out first, as circles
// ("regions") whose area follows their members (count and drawn size), packed by d3-hierarchy's
// front-chain circle packing (packSiblings) in an order that puts groups with much traffic between
// them next to each other; "split by env" packs each env's groups inside an env circle first.
// The anchors then sit fixed at the region centres and every member is clamped into its region
// after each iteration, so the regions, not the forces, keep groups apart: their outlines are
// the circles, disjoint by construction. The older row packing (`packing: "rows"`) stays for
// comparison (URL `layout=old`, the benchmark's old column).

import { packEnclose, packSiblings } from "d3-hierarchy";
import iterate from "graphology-layout-forceatlas2/iterate.js";

const PPN = 10; // floats per node in FA2's NodeMatrix
const PPE = 3; // floats per edge in its EdgeMatrix
const X = 0, Y = 1, MASS = 6, CONVERGENCE = 7, SIZE = 8, FIXED = 9;

/** FNV-1a, for deterministic starting positions. */
export function hash32(s) {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** A deterministic point in the disc of radius `r` around (cx, cy), picked by `id`. */
export function seededPoint(id, cx, cy, r) {
  const h = hash32(id);
  const a = ((h & 0xffff) / 0x10000) * 2 * Math.PI;
  const d = Math.sqrt((h >>> 16) / 0x10000) * r;
  return [cx + Math.cos(a) * d, cy + Math.sin(a) * d];
}

/**
 * Link weights from bytes: `influence` 0 ignores traffic (every link pulls alike), 1 makes a link
 * a thousand times heavier than the median pull about 60 times harder, 2 squares that. Weights
 * are normalised to a mean of 1 so the map keeps its scale when the influence changes.
 */
export function linkWeights(bytes, influence) {
  const n = bytes.length;
  const w = new Float32Array(n);
  if (n === 0) return w;
  // Bytes that are not a finite non-negative number (a corrupt map) weigh as 0 bytes: one NaN
  // would otherwise make the mean, and so every weight, NaN.
  bytes = Float64Array.from(bytes, (b) => (Number.isFinite(b) && b > 0 ? b : 0));
  const sorted = Float64Array.from(bytes).sort();
  const median = Math.max(sorted[n >> 1], 1);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const s = Math.pow(1 + Math.log1p(bytes[i] / median), 2 * influence);
    w[i] = s;
    sum += s;
  }
  const mean = sum / n;
  for (let i = 0; i < n; i++) w[i] /= mean;
  return w;
}

/**
 * Packs circles of the given radii in rows, in order, centred on the origin. `breakBefore[i]`
 * starts a new row at group i (one band per env when groups are split by env).
 */
export function packGroups(radii, breakBefore, gap) {
  const n = radii.length;
  const out = new Float64Array(2 * n);
  if (n === 0) return out;
  let area = 0;
  let maxR = 0;
  for (const r of radii) {
    area += (2 * r + gap) * (2 * r + gap);
    maxR = Math.max(maxR, r);
  }
  const width = Math.max(Math.sqrt(area) * 1.25, 2 * maxR);
  let x = 0;
  let y = 0;
  let rowH = 0;
  let rowStart = 0;
  const rows = [];
  for (let i = 0; i < n; i++) {
    const d = 2 * radii[i];
    if (i > rowStart && (x + d > width || (breakBefore && breakBefore[i]))) {
      rows.push([rowStart, i, x - gap]);
      y += rowH + gap;
      x = 0;
      rowH = 0;
      rowStart = i;
    }
    out[2 * i] = x + radii[i];
    out[2 * i + 1] = y + radii[i];
    x += d + gap;
    rowH = Math.max(rowH, d);
  }
  rows.push([rowStart, n, x - gap]);
  const totalH = y + rowH;
  // Centre each row horizontally and the block vertically; within a row, centre circles on the
  // row's middle line so small groups sit beside big ones rather than in their top corner.
  let rowY = 0;
  for (const [a, b, w] of rows) {
    let h = 0;
    for (let i = a; i < b; i++) h = Math.max(h, 2 * radii[i]);
    for (let i = a; i < b; i++) {
      out[2 * i] -= w / 2;
      // Graph y points up (sigma's convention): the first row goes on top.
      out[2 * i + 1] = totalH / 2 - (rowY + h / 2);
    }
    rowY += h + gap;
  }
  return out;
}

/**
 * Orders items so that each next one is the one with the most traffic to those already placed
 * (the biggest first, ties by size, then index): packSiblings attaches each circle to the
 * front chain of the last ones placed, so this order keeps related groups near each other.
 * Quadratic; past 2,000 items plain size order (the traffic order would cost seconds).
 */
export function trafficOrder(items, size, traffic) {
  const k = items.length;
  const bySize = items.slice().sort((a, b) => size[b] - size[a] || a - b);
  if (k <= 2 || k > 2000) return bySize;
  const score = new Map(items.map((i) => [i, 0]));
  const out = [];
  const left = new Set(bySize);
  let next = bySize[0];
  while (left.size) {
    left.delete(next);
    out.push(next);
    // A weight that is not a finite positive number (a corrupt map's NaN or negative bytes)
    // counts as none: a NaN score would never beat another and leave nothing chosen.
    for (const [j, w] of traffic.get(next) ?? []) {
      if (left.has(j) && Number.isFinite(w) && w > 0) score.set(j, score.get(j) + w);
    }
    let best = -1;
    let bestScore = -1;
    for (const j of bySize) {
      if (!left.has(j)) continue;
      const sc = score.get(j);
      if (best === -1 || sc > bestScore) {
        best = j;
        bestScore = sc;
      }
    }
    next = best;
  }
  return out;
}

/**
 * Packs group regions. `radii[g]`: the region radius each group needs; `parent[g]`: index of its
 * parent (an env, when split by env) or -1; `traffic`: Map g -> Map h -> weight (symmetric);
 * `gap`: the space between outlines (and between a parent's outline and its children's).
 * Returns {x, y, r} per group and per parent, centred on the origin; circles of siblings are
 * at least `gap` apart, children lie inside their parent at least `gap` from its outline.
 */
export function packRegions(radii, parent, parentCount, traffic, gap) {
  const n = radii.length;
  const groups = Array.from({ length: n }, (_, g) => ({ x: 0, y: 0, r: radii[g] }));
  const parents = Array.from({ length: parentCount }, () => ({ x: 0, y: 0, r: 0 }));
  // Traffic between parents: the sum over their children.
  const ptraffic = new Map();
  for (const [g, row] of traffic) {
    for (const [h, w] of row) {
      const a = parent[g] >= 0 ? parentCount + parent[g] : -1 - g;
      const b = parent[h] >= 0 ? parentCount + parent[h] : -1 - h;
      if (a === b) continue;
      if (!ptraffic.has(a)) ptraffic.set(a, new Map());
      ptraffic.get(a).set(b, (ptraffic.get(a).get(b) ?? 0) + w);
    }
  }
  const packOrdered = (circles, ids, size, tr) => {
    const order = trafficOrder(ids, size, tr);
    const at = new Map(ids.map((id, i) => [id, i]));
    const items = order.map((id) => ({ r: circles[at.get(id)].r + gap / 2, c: circles[at.get(id)] }));
    packSiblings(items);
    for (const it of items) {
      it.c.x = it.x;
      it.c.y = it.y;
    }
    return items;
  };
  // Children inside each parent, relative to the parent's centre.
  for (let p = 0; p < parentCount; p++) {
    const kids = [];
    for (let g = 0; g < n; g++) if (parent[g] === p) kids.push(g);
    if (!kids.length) continue;
    const size = {};
    for (const g of kids) size[g] = radii[g];
    const items = packOrdered(kids.map((g) => groups[g]), kids, size, traffic);
    const e = packEnclose(items);
    for (const g of kids) {
      groups[g].x -= e.x;
      groups[g].y -= e.y;
    }
    parents[p].r = e.r + gap / 2;
  }
  // The top level: parents and the groups without one.
  const top = [];
  const circles = [];
  const size = {};
  for (let p = 0; p < parentCount; p++) {
    if (parents[p].r <= 0) continue;
    top.push(parentCount + p);
    circles.push(parents[p]);
    size[parentCount + p] = parents[p].r;
  }
  for (let g = 0; g < n; g++) {
    if (parent[g] >= 0) continue;
    top.push(-1 - g);
    circles.push(groups[g]);
    size[-1 - g] = radii[g];
  }
  if (top.length) {
    const items = packOrdered(circles, top, size, ptraffic);
    const e = packEnclose(items);
    for (const c of circles) {
      c.x -= e.x;
      c.y -= e.y;
    }
  }
  for (let g = 0; g < n; g++) {
    if (parent[g] < 0) continue;
    groups[g].x += parents[parent[g]].x;
    groups[g].y += parents[parent[g]].y;
  }
  return { groups, parents };
}

const MIN_ITERATIONS = 60;
const SPREAD_ITERATIONS = 30;

/**
 * A layout run. Input (all typed arrays, indexed by node / link):
 * - `x`, `y`: starting positions; NaN where unknown (placed near the group or on a disc);
 * - `ids`: node ids (for deterministic placement of new nodes);
 * - `group`: group index per node, -1 when ungrouped; `groupCount`; `breakBefore` per group;
 * - `src`, `dst`, `bytes`: links; `influence`: traffic influence on the layout (0..3);
 * - `sizes` (drawn node sizes in pixels) and `viewport` ({width, height}): optional, for the
 *   overlap removal that ends the run;
 * - `fixed`: optional, 1 for nodes pinned where they are (dragged there): no force, re-pack or
 *   overlap push moves them; they still pull and push the others.
 */
export class Layout {
  constructor(input) {
    const { ids, x, y, group, groupCount, breakBefore, src, dst, bytes, influence, sizes, viewport, fixed } = input;
    this.fixed = fixed ?? null;
    this.sizes = sizes ?? null;
    this.viewport = viewport ?? null;
    this.spreadDone = 0;
    this.lastRepack = 0;
    this.repackShift = 0;
    const n = ids.length;
    this.n = n;
    this.groupCount = groupCount;
    this.breakBefore = breakBefore;
    this.group = group;
    this.iterations = 0;
    this.calm = 0;
    const order = n + groupCount;
    const nodes = new Float32Array(order * PPN);
    const degree = new Float32Array(n);
    for (let e = 0; e < src.length; e++) {
      degree[src[e]]++;
      degree[dst[e]]++;
    }
    const members = new Uint32Array(groupCount);
    for (let i = 0; i < n; i++) if (group[i] >= 0) members[group[i]]++;
    // Unit length: the spacing FA2 settles at for this scaling ratio, so that first guesses of
    // group sizes and starting discs are close to what the layout will do.
    this.unit = 5;
    const w = linkWeights(bytes, influence);
    this.packing = input.packing === "rows" || groupCount === 0 ? "rows" : "regions";
    let radii;
    if (this.packing === "regions") {
      this.packRegions(input, w);
      radii = Array.from({ length: groupCount }, (_, g) => this.regions[3 * g + 2]);
    } else {
      radii = Array.from(members, (m) => this.unit * (1 + Math.sqrt(m)));
      this.anchors = packGroups(radii, breakBefore, 2 * this.unit);
    }
    const spread = this.unit * Math.sqrt(n + 1) * 1.5;
    for (let i = 0; i < n; i++) {
      const o = i * PPN;
      let px = x[i];
      let py = y[i];
      if (!Number.isFinite(px) || !Number.isFinite(py)) {
        const g = group[i];
        [px, py] = g >= 0
          ? seededPoint(ids[i], this.anchors[2 * g], this.anchors[2 * g + 1], radii[g] * 0.8)
          : seededPoint(ids[i], 0, 0, spread);
      }
      nodes[o + X] = px;
      nodes[o + Y] = py;
      nodes[o + MASS] = 1 + degree[i];
      nodes[o + CONVERGENCE] = 1;
      nodes[o + SIZE] = 1;
      if (this.fixed?.[i]) nodes[o + FIXED] = 1;
    }
    for (let g = 0; g < groupCount; g++) {
      const o = (n + g) * PPN;
      nodes[o + X] = this.anchors[2 * g];
      nodes[o + Y] = this.anchors[2 * g + 1];
      // Non-zero: FA2's Barnes-Hut divides by summed masses.
      nodes[o + MASS] = 1e-3;
      nodes[o + CONVERGENCE] = 1;
      nodes[o + SIZE] = 1;
      nodes[o + FIXED] = 1;
    }
    const grouped = groupCount > 0 ? n : 0;
    let virtual = 0;
    for (let i = 0; i < grouped; i++) if (group[i] >= 0) virtual++;
    const edges = new Float32Array((src.length + virtual) * PPE);
    // Summed link weight per node: the anchor's pull is set against it.
    const pull = new Float32Array(n);
    for (let e = 0; e < src.length; e++) {
      pull[src[e]] += w[e];
      pull[dst[e]] += w[e];
    }
    for (let e = 0; e < src.length; e++) {
      edges[e * PPE] = src[e] * PPN;
      edges[e * PPE + 1] = dst[e] * PPN;
      edges[e * PPE + 2] = w[e];
    }
    // The pull towards the group focus is 4 times a node's summed link pull (plus one, for
    // nodes without links): heavy traffic to other groups bends a group towards its peers
    // without tearing it, and hubs (which FA2 repels harder) stay in their group.
    let k = src.length;
    // With regions the clamp holds groups together: a milder pull lets members use their region
    // (4 times crowds small maps in the middle of big regions, links hidden under nodes).
    const anchorPull = this.packing === "regions" ? 1 : 4;
    for (let i = 0; i < grouped; i++) {
      if (group[i] < 0) continue;
      edges[k * PPE] = i * PPN;
      edges[k * PPE + 1] = (n + group[i]) * PPN;
      edges[k * PPE + 2] = anchorPull * (1 + pull[i]);
      k++;
    }
    this.nodes = nodes;
    this.edges = edges;
    this.options = {
      linLogMode: false,
      outboundAttractionDistribution: false,
      adjustSizes: false,
      edgeWeightInfluence: 1, // weights above already carry the traffic influence
      scalingRatio: 10,
      strongGravityMode: true,
      // Grouped layouts are held by their anchors; ungrouped ones need gravity so that
      // disconnected parts do not fly away.
      gravity: groupCount > 0 ? 0.002 : 0.05,
      slowDown: 1 + Math.log(Math.max(n, 2)),
      barnesHutOptimize: n > 400,
      barnesHutTheta: 1.0,
    };
    // Fewer iterations for bigger maps (each costs more, and they start near their groups):
    // 1,500 for a handful of nodes, about 250 at 5,000 nodes and 50,000 links.
    this.maxIterations = Math.round(Math.min(1500, Math.max(200, 60000 / Math.sqrt(n + src.length + 1))));
    // With regions the groups cannot drift or overlap, and members start inside them: fewer
    // iterations do (150 at 600 nodes / 3,000 links, 80 at 5,000 / 50,000). Nodes pressed
    // against their rim keep FA2's movement measure up, so the cap is what usually ends it.
    if (this.packing === "regions") this.maxIterations = Math.round(Math.min(150, Math.max(80, 9000 / Math.sqrt(n + src.length + 1))));
    // Groups keep growing while FA2 expands: re-pack every 40 iterations, the last time 40
    // before the cap, so that the end state is packed.
    this.repackAt = new Set();
    // Regions are packed once, up front: no re-pack.
    if (groupCount > 1 && this.packing === "rows") for (let i = 30; i <= this.maxIterations - 40; i += 40) this.repackAt.add(i);
  }

  /**
   * Runs up to `k` iterations; returns the mean displacement per node in the last iteration
   * relative to the mean spacing between nodes, and whether the layout has settled.
   */
  step(k) {
    const { n, nodes } = this;
    const prev = new Float32Array(2 * n);
    let movement = 0;
    for (let s = 0; s < k && !this.settled(); s++) {
      if (this.converged()) {
        this.spread();
        continue;
      }
      if (this.repackAt.has(this.iterations)) this.repack();
      for (let i = 0; i < n; i++) {
        prev[2 * i] = nodes[i * PPN + X];
        prev[2 * i + 1] = nodes[i * PPN + Y];
      }
      iterate(this.options, nodes, this.edges);
      this.clamp();
      this.iterations++;
      let moved = 0;
      let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
      for (let i = 0; i < n; i++) {
        const px = nodes[i * PPN + X];
        const py = nodes[i * PPN + Y];
        moved += Math.hypot(px - prev[2 * i], py - prev[2 * i + 1]);
        if (px < minX) minX = px;
        if (px > maxX) maxX = px;
        if (py < minY) minY = py;
        if (py > maxY) maxY = py;
      }
      const spacing = Math.sqrt(Math.max((maxX - minX) * (maxY - minY), 1) / Math.max(n, 1));
      movement = n ? moved / n / spacing : 0;
      // Settled once nodes move less than 3% of their spacing per iteration for a while.
      this.calm = movement < 0.03 ? this.calm + 1 : 0;
    }
    return { movement, settled: this.settled() };
  }

  /**
   * Ends the force phase now (the time budget is spent): the layout is as good as it got, and
   * the overlap pass still runs.
   */
  stopForces() {
    this.forcesStopped = true;
  }

  /** The force phase is over (converged, out of iterations, or stopped). */
  converged() {
    if (this.n === 0 || this.forcesStopped) return true;
    if (this.iterations >= this.maxIterations) return true;
    // Calm since the last re-pack, and that re-pack hardly moved the groups.
    return this.iterations >= Math.max(MIN_ITERATIONS, this.lastRepack + 20) && this.calm >= 15 && this.repackShift < 0.05;
  }

  settled() {
    return this.converged() && (!this.sizes || this.spreadDone >= SPREAD_ITERATIONS);
  }

  /**
   * Re-packs group foci from the measured spread of each group's members. Margins and gaps are
   * in units of the typical spacing between members, so groups neither overlap nor float far
   * apart whatever the scale FA2 settles at.
   */
  repack() {
    const { n, nodes, groupCount, group } = this;
    const sum2 = new Float64Array(groupCount);
    const cnt = new Float64Array(groupCount);
    for (let i = 0; i < n; i++) {
      const g = group[i];
      if (g < 0) continue;
      const dx = nodes[i * PPN + X] - this.anchors[2 * g];
      const dy = nodes[i * PPN + Y] - this.anchors[2 * g + 1];
      sum2[g] += dx * dx + dy * dy;
      cnt[g]++;
    }
    const rms = Array.from(sum2, (s, g) => Math.sqrt(s / Math.max(cnt[g], 1)));
    const spacings = rms.map((r, g) => r / Math.sqrt(cnt[g])).filter((x, g) => cnt[g] >= 2 && x > 0).sort((a, b) => a - b);
    const spacing = spacings.length ? spacings[spacings.length >> 1] : this.unit;
    const radii = rms.map((r) => 1.5 * r + 1.5 * spacing);
    const next = packGroups(radii, this.breakBefore, 2.5 * spacing);
    // How far the groups moved, relative to the packing's size: small once the layout is stable.
    let shift = 0;
    let size = 1e-9;
    for (let g = 0; g < groupCount; g++) {
      shift = Math.max(shift, Math.hypot(next[2 * g] - this.anchors[2 * g], next[2 * g + 1] - this.anchors[2 * g + 1]));
      size = Math.max(size, Math.abs(next[2 * g]) + radii[g], Math.abs(next[2 * g + 1]) + radii[g]);
    }
    this.repackShift = shift / size;
    this.lastRepack = this.iterations;
    // Move members with their anchor so the re-pack does not tear groups apart.
    for (let i = 0; i < n; i++) {
      const g = group[i];
      if (g < 0 || this.fixed?.[i]) continue;
      nodes[i * PPN + X] += next[2 * g] - this.anchors[2 * g];
      nodes[i * PPN + Y] += next[2 * g + 1] - this.anchors[2 * g + 1];
    }
    for (let g = 0; g < groupCount; g++) {
      nodes[(n + g) * PPN + X] = next[2 * g];
      nodes[(n + g) * PPN + Y] = next[2 * g + 1];
    }
    this.anchors = next;
  }

  /**
   * One pass of overlap removal, after the forces: nodes drawn at `sizes` pixels (sigma's size
   * at the whole-map zoom) that would overlap on a `viewport` showing the whole map are pushed
   * apart. Forces settle by distance, not by drawn size, so small maps otherwise show
   * overlapping circles.
   */
  spread() {
    this.spreadOnce();
    this.clamp();
  }

  spreadOnce() {
    this.spreadDone++;
    const { n, nodes, sizes, viewport } = this;
    if (!sizes || !viewport || n < 2) return;
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (let i = 0; i < n; i++) {
      const px = nodes[i * PPN + X], py = nodes[i * PPN + Y];
      minX = Math.min(minX, px);
      maxX = Math.max(maxX, px);
      minY = Math.min(minY, py);
      maxY = Math.max(maxY, py);
    }
    const extent = Math.max(maxX - minX, maxY - minY, 1e-6);
    const perPx = extent / Math.max(Math.min(viewport.width, viewport.height) - 80, 100);
    let maxR = 0;
    const r = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      r[i] = (sizes[i] + 3) * perPx;
      maxR = Math.max(maxR, r[i]);
    }
    // Uniform grid of cells two radii wide: only neighbouring cells can hold overlaps.
    const cell = 2 * maxR;
    const grid = new Map();
    // Numeric cell keys (string keys cost a second per pass at 5,000 nodes on a slow machine).
    const cellKey = (cx, cy) => (cx + 32768) * 65536 + (cy + 32768);
    for (let i = 0; i < n; i++) {
      const key = cellKey(Math.floor(nodes[i * PPN + X] / cell), Math.floor(nodes[i * PPN + Y] / cell));
      let list = grid.get(key);
      if (!list) grid.set(key, (list = []));
      list.push(i);
    }
    for (let i = 0; i < n; i++) {
      const xi = nodes[i * PPN + X], yi = nodes[i * PPN + Y];
      const cx = Math.floor(xi / cell), cy = Math.floor(yi / cell);
      for (let gx = cx - 1; gx <= cx + 1; gx++) {
        for (let gy = cy - 1; gy <= cy + 1; gy++) {
          for (const j of grid.get(cellKey(gx, gy)) ?? []) {
            if (j <= i) continue;
            let dx = nodes[j * PPN + X] - nodes[i * PPN + X];
            let dy = nodes[j * PPN + Y] - nodes[i * PPN + Y];
            let d = Math.hypot(dx, dy);
            const need = r[i] + r[j];
            if (d >= need) continue;
            if (d < 1e-9) {
              // Same spot: separate along a direction picked by the pair.
              dx = Math.cos(i * 2.399 + j);
              dy = Math.sin(i * 2.399 + j);
              d = 1;
            }
            // A pinned node stays: the other one moves the whole way (both pinned: neither).
            const fi = this.fixed?.[i] ? 1 : 0;
            const fj = this.fixed?.[j] ? 1 : 0;
            if (fi && fj) continue;
            const push = ((need - d) / (fi || fj ? 1 : 2)) * 0.8;
            const ux = dx / d, uy = dy / d;
            if (!fi) {
              nodes[i * PPN + X] -= ux * push;
              nodes[i * PPN + Y] -= uy * push;
            }
            if (!fj) {
              nodes[j * PPN + X] += ux * push;
              nodes[j * PPN + Y] += uy * push;
            }
          }
        }
      }
    }
  }

  /**
   * Issue 14, item 1: packs the group regions (see packRegions) and places the anchors at their
   * centres. A region's area follows its members, each counted by its drawn size against the
   * mean (a hub needs more room than a leaf); regions grow until the biggest member, drawn at the
   * whole-map zoom, fits twice across. Sets `regions` (x, y, r per group, then per parent) and
   * `limit` (how far from its region's centre each node may be).
   */
  packRegions(input, w) {
    const { group, groupCount, src, dst, sizes, viewport } = input;
    const n = group.length;
    const parent = input.parent ?? new Int32Array(groupCount).fill(-1);
    const parentCount = input.parentCount ?? 0;
    let mean = 0;
    for (let i = 0; i < n; i++) mean += sizes ? sizes[i] : 1;
    mean = Math.max(mean / Math.max(n, 1), 1e-6);
    const need = new Float64Array(groupCount);
    const maxSize = new Float64Array(groupCount);
    for (let i = 0; i < n; i++) {
      const g = group[i];
      if (g < 0) continue;
      const s = sizes ? sizes[i] : 1;
      need[g] += 0.5 + 0.5 * (s / mean) ** 2;
      maxSize[g] = Math.max(maxSize[g], s);
    }
    const traffic = new Map();
    const add = (a, b, x) => {
      if (!traffic.has(a)) traffic.set(a, new Map());
      traffic.get(a).set(b, (traffic.get(a).get(b) ?? 0) + x);
    };
    for (let e = 0; e < src.length; e++) {
      const a = group[src[e]], b = group[dst[e]];
      if (a < 0 || b < 0 || a === b) continue;
      add(a, b, w[e]);
      add(b, a, w[e]);
    }
    const radii = Array.from(need, (m) => this.unit * (1 + 1.4 * Math.sqrt(m)));
    // Between outlines: three units, plus a tenth of the mean region radius so that big groups
    // read apart too.
    const gap = 3 * this.unit + (0.1 * radii.reduce((a, r) => a + r, 0)) / Math.max(radii.length, 1);
    const view = viewport ?? { width: 1000, height: 800 };
    const fit = Math.max(Math.min(view.width, view.height) - 128, 100);
    let packed;
    let perPx = 0;
    for (let pass = 0; pass < 3; pass++) {
      packed = packRegions(radii, parent, parentCount, traffic, gap);
      let extent = 0;
      for (const c of packed.groups) extent = Math.max(extent, Math.hypot(c.x, c.y) + c.r);
      for (const c of packed.parents) extent = Math.max(extent, Math.hypot(c.x, c.y) + c.r);
      perPx = (2 * extent) / fit;
      let grown = false;
      for (let g = 0; g < groupCount; g++) {
        const want = 2.5 * maxSize[g] * perPx;
        if (radii[g] < want) {
          radii[g] = want;
          grown = true;
        }
      }
      if (!grown) break;
    }
    this.regionGap = gap;
    this.regions = new Float64Array(3 * (groupCount + parentCount));
    packed.groups.forEach((c, g) => this.regions.set([c.x, c.y, c.r], 3 * g));
    packed.parents.forEach((c, p) => this.regions.set([c.x, c.y, c.r], 3 * (groupCount + p)));
    this.anchors = new Float64Array(2 * groupCount);
    for (let g = 0; g < groupCount; g++) this.anchors.set([packed.groups[g].x, packed.groups[g].y], 2 * g);
    // A node's centre stays a drawn radius (and a bit) inside its outline.
    this.limit = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const g = group[i];
      if (g < 0) continue;
      const r = packed.groups[g].r;
      this.limit[i] = Math.max(r - 1.3 * (sizes ? sizes[i] : 1) * perPx, 0.3 * r);
    }
  }

  /**
   * Moves every member that left its region back inside. Pinned nodes stay where they were
   * pinned (the app clamps a drag into the region before pinning).
   */
  clamp() {
    if (this.packing !== "regions") return;
    const { n, nodes, group, regions, limit } = this;
    for (let i = 0; i < n; i++) {
      const g = group[i];
      if (g < 0 || this.fixed?.[i]) continue;
      const cx = regions[3 * g], cy = regions[3 * g + 1];
      const dx = nodes[i * PPN + X] - cx, dy = nodes[i * PPN + Y] - cy;
      const d = Math.hypot(dx, dy);
      if (d <= limit[i]) continue;
      const k = limit[i] / d;
      nodes[i * PPN + X] = cx + dx * k;
      nodes[i * PPN + Y] = cy + dy * k;
    }
  }

  /** Regions (x, y, r per group, then per parent), or null with the row packing. */
  regionList() {
    return this.regions ? Float64Array.from(this.regions) : null;
  }

  /** Current positions, [x0, y0, x1, y1, ...]. */
  positions() {
    const out = new Float32Array(2 * this.n);
    for (let i = 0; i < this.n; i++) {
      out[2 * i] = this.nodes[i * PPN + X];
      out[2 * i + 1] = this.nodes[i * PPN + Y];
    }
    return out;
  }
}
