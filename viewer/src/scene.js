// From a map (after filters) to the graph that is drawn: a graphology graph whose node and edge
// attributes are the display attributes both renderers read (x, y, size, color, borderColor,
// borderSize, label; edge size and color), plus the reducers that highlight a search, a
// selection or a hovered node with its neighbours.

import Graph from "graphology";
import { COST_COLORS, DIFF_COLORS, DIMMED_EDGE, DIMMED_NODE, EDGE_CROSS_ENV, EDGE_NEUTRAL, EXTERNAL, HIGHLIGHT, KIND_COLORS, UNKNOWN, categoryColors, envColors, onBackground, shade, tint } from "./colors.js";
import { linkBytes, logScale, sizeScale } from "./model.js";

export const NODE_MIN = 3;
/** The ring of a pinned node. */
export const PINNED = "#6d28d9";
export const NODE_MAX = 18;
export const EDGE_MIN = 0.6;
export const EDGE_MAX = 7;

/** Colours of envs and archdomain tops over the whole map (not just what filters leave). */
export function palettes(doc) {
  return {
    env: envColors(doc.nodes.map((n) => n.env)),
    arch: categoryColors(doc.nodes.map((n) => (n.archdomain ? n.archdomain.split("/")[0] : null))),
  };
}

export function nodeColor(n, mode, pal) {
  if (n.kind === "external") return EXTERNAL;
  if (mode === "kind") return KIND_COLORS[n.kind] ?? UNKNOWN;
  if (mode === "archdomain") return (n.archdomain && pal.arch.get(n.archdomain.split("/")[0])) || UNKNOWN;
  return (n.env && pal.env.get(n.env)) || UNKNOWN;
}

function edgeColor(l, src, dst, mode) {
  if (l.diff) return DIFF_COLORS[l.diff];
  if (mode === "cost") return COST_COLORS[l.cost_kind] ?? COST_COLORS.unknown;
  if (mode === "crossenv" && src.env && dst.env && src.env !== dst.env) return EDGE_CROSS_ENV;
  return EDGE_NEUTRAL;
}

/**
 * Builds the drawn graph. `positions` maps node ids to [x, y] from an earlier layout (kept, so
 * that a node stays where users saw it yesterday); others start at the origin until the layout
 * places them.
 */
export function buildGraph(index, filtered, state, pal, positions, viewport) {
  const graph = new Graph({ type: "directed", multi: false, allowSelfLoops: false });
  let eLo = Infinity, eHi = 0;
  for (const i of filtered.links) {
    const b = linkBytes(index.links[i]);
    eLo = Math.min(eLo, b);
    eHi = Math.max(eHi, b);
  }
  // Crowded maps get smaller circles: at the whole-map zoom, circles cover at most about a
  // fifth of the viewport, a tenth when grouped (their size grows as one zooms in).
  const view = viewport ?? { width: 1000, height: 700 };
  // Sizes follow bytes, or the price per hour (state.sizeBy).
  const sizeBy = state.sizeBy ?? "bytes";
  const shown = filtered.nodes.map((id) => index.byId.get(id));
  const sc = sizeScale(shown, sizeBy, NODE_MIN, NODE_MAX);
  let area = 0;
  for (const n of shown) area += Math.PI * sc.size(n) ** 2;
  // Issue 14, item 1: grouped maps pack their groups into circular regions, which use less of a
  // wide viewport than free nodes do; their circles cover at most a tenth of it, or members
  // would not fit their regions without overlapping.
  const cover = state.group && state.group !== "none" ? 0.1 : 0.2;
  const shrink = Math.min(1, Math.sqrt((cover * view.width * view.height) / Math.max(area, 1)));
  // By bytes, `nodeSize` takes a byte count (the legend's samples); by price, a price.
  const raw = sizeBy === "price" ? (p) => sc.size({ price_per_hour: p }) : logScale(Number.isFinite(sc.lo) ? sc.lo : 1, sc.hi, NODE_MIN, NODE_MAX);
  const nodeSize = (v) => Math.max(1.2, raw(v) * shrink);
  // Many links: thinner and lighter, or they bury the nodes under one grey mass.
  const edgeDensity = Math.min(1, Math.sqrt(3000 / Math.max(filtered.links.length, 1)));
  const rawEdge = logScale(Number.isFinite(eLo) ? eLo : 1, eHi, EDGE_MIN, EDGE_MAX);
  const edgeSize = (b) => Math.max(0.5, rawEdge(b) * Math.max(edgeDensity, 0.25));
  const edgeAlpha = Math.max(0.28, 0.75 * edgeDensity);
  for (const id of filtered.nodes) {
    const n = index.byId.get(id);
    const base = nodeColor(n, state.color, pal);
    const unmonitored = n.kind === "unmonitored";
    let borderColor = unmonitored ? base : shade(base, 0.3);
    let borderSize = unmonitored ? 0.35 : 0.12;
    let color = unmonitored ? tint(base, 0.7) : base;
    if (n.diff === "new" || n.diff === "gone") {
      borderColor = DIFF_COLORS[n.diff];
      borderSize = 0.4;
      if (n.diff === "gone") color = tint(color, 0.6);
    }
    const p = positions?.get(id);
    graph.addNode(id, {
      x: p ? p[0] : 0,
      y: p ? p[1] : 0,
      size: Math.max(1.2, sc.size(n) * shrink),
      label: n.label,
      color,
      borderColor,
      borderSize,
      type: "border",
    });
  }
  for (const i of filtered.links) {
    const l = index.links[i];
    // A pair that calls each other both ways has two links; the second is drawn on top.
    if (graph.hasDirectedEdge(l.source, l.target)) continue;
    const src = index.byId.get(l.source);
    const dst = index.byId.get(l.target);
    const color = edgeColor(l, src, dst, state.edges);
    graph.addDirectedEdgeWithKey(String(i), l.source, l.target, {
      size: edgeSize(linkBytes(l)),
      color: onBackground(color, l.diff === "same" ? Math.min(0.45, edgeAlpha) : l.diff ? 0.8 : edgeAlpha),
      type: "arrow",
    });
  }
  return {
    graph,
    scales: { node: [sc.lo, sc.hi], edge: [eLo, eHi], nodeSize, edgeSize, shrink, sizeBy, unpriced: sc.unpriced },
  };
}

/**
 * Reducers that emphasise `focus` (a set of node ids: the search result or the selection with
 * their neighbours, or the hovered node's neighbourhood): everything else is greyed and loses
 * its label. `marked` nodes (search hits, the selection) get a dark ring and always a label.
 */
export function makeReducers(getGraph, getFocus, getPins = () => null) {
  const focused = (node, data) => {
    const { focus, marked } = getFocus();
    if (!focus) return data;
    if (!focus.has(node)) return { ...data, color: DIMMED_NODE, borderColor: DIMMED_NODE, label: null, zIndex: 0 };
    if (marked?.has(node)) return { ...data, borderColor: HIGHLIGHT, borderSize: 0.3, forceLabel: true, zIndex: 2, highlighted: false };
    return { ...data, forceLabel: focus.size <= 60, zIndex: 1 };
  };
  // A pinned node (dragged into place) wears a thick violet ring, unless it is dimmed.
  const nodeReducer = (node, data) => {
    const d = focused(node, data);
    if (!getPins()?.has(node) || d.color === DIMMED_NODE) return d;
    return { ...d, borderColor: PINNED, borderSize: 0.45 };
  };
  const edgeReducer = (edge, data) => {
    const { focus, edgesHidden } = getFocus();
    if (edgesHidden) return { ...data, hidden: true };
    if (!focus) return data;
    const [s, t] = getGraph().extremities(edge);
    if (focus.has(s) && focus.has(t)) return { ...data, zIndex: 1 };
    return { ...data, color: DIMMED_EDGE, zIndex: 0 };
  };
  return { nodeReducer, edgeReducer };
}

/** Colour of a group's hull, from its env when it has one. */
export function groupColor(env, pal) {
  const c = env ? pal.env.get(env) : null;
  return c ?? "#8d99ae";
}

export { tint };
