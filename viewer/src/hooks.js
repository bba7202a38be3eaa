// `window.__trafficmap`: what the app draws, for the browser tests and the benchmark. Read-only
// views of the app's state, plus camera moves and a selection the tests drive.

import { DEFAULTS } from "./state.js";
import { DIMMED_EDGE } from "./colors.js"; // issue 14 (v14-links)

export function exposeHooks(app) {
  window.__trafficmap = {
    get ready() {
      return app.ready && app.layout.state === "settled";
    },
    get layout() {
      return { ...app.layout };
    },
    state: () => JSON.parse(JSON.stringify(app.state)),
    days: () => app.days.slice(),
    /** What is drawn: nodes and links in the graph, and those inside the viewport. */
    stats() {
      if (!app.scene || !app.renderer) return null;
      const r = app.renderer;
      const { width, height } = r.getDimensions();
      let inView = 0;
      app.scene.graph.forEachNode((_, a) => {
        const p = r.graphToViewport(a);
        if (p.x >= 0 && p.y >= 0 && p.x <= width && p.y <= height) inView++;
      });
      return {
        renderer: r.kind,
        nodes: app.scene.graph.order,
        edges: app.scene.graph.size,
        nodesInView: inView,
        frames: r.frames,
        // The groups of the grouping (env regions holding groups when split by env are not groups).
        groups: app.hulls.filter((g) => !g.parent).map((g) => g.key).sort(),
        highlighted: app.focus.focus ? app.focus.focus.size : 0,
        marked: app.focus.marked ? [...app.focus.marked].sort() : [],
        searchHits: app.searchHits.slice().sort(),
        suppressed: app.filtered.suppressed,
        diff: app.data.doc.diff?.counts ?? null,
        canvasDrawn: r.kind === "canvas" ? { ...r.lastDrawn } : null,
        lastExport: app.exports.lastExport ?? null,
        // issue 14 item 2 (v14-links): links shown and hidden by the top-N limit, bundles.
        ...app.linkStats(),
      };
    },
    /** Where a node is drawn (CSS pixels inside #map) and its colour after highlighting. */
    node(id) {
      if (!app.scene?.graph.hasNode(id)) return null;
      const a = app.scene.graph.getNodeAttributes(id);
      const d = app.reducers.nodeReducer(id, a);
      const p = app.renderer.graphToViewport(a);
      return { x: p.x, y: p.y, r: app.renderer.scaleSize(d.size), color: d.color, borderColor: d.borderColor, label: d.label, gx: a.x, gy: a.y, size: a.size, pinned: app.pinned.has(id) };
    },
    nodeIds: () => (app.scene ? app.scene.graph.nodes() : []),
    /** What the CSV and DOT exports of the screen send the collector. */
    subset: () => (app.filtered ? app.exports.subset() : null),
    edgeEnds: () => (app.scene ? app.scene.graph.mapEdges((_, __, s, t) => [s, t]) : []),
    /** Camera moves for the benchmark and the tests. */
    zoom: (f, ms) => app.camera.zoom(f, ms),
    pan: (dx, dy, ms) => app.camera.panBy(dx, dy, ms),
    reset: (ms) => app.camera.reset(ms),
    camera: () => ({ ...app.camera.state(), moving: app.camera.moving, frameMs: app.camera.frameMs }),
    /** Milliseconds of one full refresh (data processing and drawing), for diagnostics. */
    timeRefresh() {
      const t = performance.now();
      if (app.renderer.kind === "webgl") app.renderer.sigma.refresh();
      else app.renderer.render();
      return performance.now() - t;
    },
    select: (id) => app.select(id, false),
    defaults: DEFAULTS,
    // Issue 14, items 1 and 4: what the last frame drew, in viewport pixels (CSS pixels in #map).
    /** Group outlines: [{key, polygon: [[x, y], ...], parent}] (parent: an env region holding groups). */
    outlines: () => app.drawn.outlines.map((o) => ({ key: o.key, polygon: o.polygon.map((p) => p.slice()), parent: !!o.parent })),
    /** Every label drawn, node labels ({id}) and group names ({group}): [{id | group, x, y, w, h}]. */
    drawnLabels: () => app.drawn.labels.map((l) => ({ ...l })),
    get nodeSizeShrink() {
      return app.scene?.scales.shrink ?? 1;
    },
    // ---- issue 14 items 2 and 3 (v14-links) ----
    /** The bundles drawn: group keys (source before target in group order), count, bytes, width. */
    bundles: () => app.linkView.bundles.map((b) => ({ source: b.source, target: b.target, count: b.count, bytes: b.bytes, width: b.width })),
    /** Whether a group shows its own hosts' links (zoomed in, or selected while zoomed out). */
    expanded: (key) => !app.linkView.collapsed || app.linkView.expanded.has(key),
    /** The links drawn after every reducer (focus, bundles, top N), as [source, target]. */
    edgesShown: () => (app.scene ? app.scene.graph.filterEdges((k, a) => !app.reducers.edgeReducer(k, a).hidden).map((k) => app.scene.graph.extremities(k)) : []),
    /** Keys of the links drawn faded (inside a collapsed group, or outside the focus). */
    edgesFaded: () => (app.scene ? app.scene.graph.filterEdges((k, a) => { const d = app.reducers.edgeReducer(k, a); return !d.hidden && d.color === DIMMED_EDGE; }) : []),
    /** Bundles as drawn on screen, for pointing at one: [{source, target, ax, ay, bx, by}]. */
    bundleSegments: () => (app.renderer ? app.bundleSegments(app.renderer).map((s) => ({ source: s.bundle.source, target: s.bundle.target, ax: s.a.x, ay: s.a.y, bx: s.b.x, by: s.b.y })) : []),
    selectGroup: (key) => app.selectGroup(key),
    /** Where a group is drawn (for clicking it): its members' mean position, viewport pixels. */
    groupCentre: (key) => (app.renderer ? app.groupCentres(app.renderer).get(key) ?? null : null),
    groupAt: (x, y) => app.groupAt({ x, y }),
    // ---- end issue 14 items 2 and 3 ----
  };
}
