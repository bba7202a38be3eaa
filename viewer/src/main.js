// The viewer: loads days and maps from the collector, applies filters and grouping, runs the
// layout in a worker, draws with sigma (WebGL) or the canvas fallback, and keeps every choice in
// the URL. This module holds the app's data and its pipeline (state → map → scene → layout →
// renderer) and wires the rest: controls.js (inputs and keys), panels.js (what is shown beside the
// map), exports.js (images and links), hooks.js (`window.__trafficmap`, for the browser tests and
// the benchmark).

import "./style.css";
import { ApiError, AuthRequired, fetchDays, fetchMap, fetchViewerConfig, forgetReadToken, readToken, setReadToken } from "./api.js";
import { CameraController } from "./camera.js";
import { Controls } from "./controls.js";
import { $ } from "./dom.js";
import { Exports } from "./exports.js";
import { drawGroups, drawRegionOutlines, groupHulls, regionHulls } from "./groups.js";
import { exposeHooks } from "./hooks.js";
import { drawLabels } from "./labels.js";
import { runLayout } from "./layout-run.js";
import { applyFilters, compareGroups, diffMaps, groupEnv, groupKey, indexMap, linkBytes, searchNodes, withNeighbours } from "./model.js";
import { CanvasTarget } from "./paint.js";
import { Panels } from "./panels.js";
import { CanvasRenderer } from "./renderer-canvas.js";
import { SigmaRenderer, webglAvailable } from "./renderer-sigma.js";
import { buildGraph, makeReducers, palettes } from "./scene.js";
import { effectsOf, mapQuery, parseState, serializeState, withPin, withoutPin } from "./state.js";
// issue 14 items 2 and 3 (v14-links): bundles, top N, group focus.
import { DIMMED_EDGE, EDGE_NEUTRAL, withAlpha } from "./colors.js";
import { convexHull, regionPolygon } from "./groups.js";
import { BUNDLE_RATIO, bundleWidth, bundlingOn, buildBundles, linkLimit, pointInPolygon, segmentDistance, topHidden } from "./links.js";
import { fmtCount } from "./model.js";
import { EDGE_MAX, EDGE_MIN } from "./scene.js";

/* global __WORKER_URL__ */

/** Maps with more links than this are drawn without links while the layout runs. */
const BIG_MAP_LINKS = 10000;

class App {
  constructor() {
    this.state = parseState(location.search);
    this.days = [];
    this.data = null;
    this.filtered = null;
    this.scene = null;
    this.groupOf = new Map();
    this.hulls = [];
    // Issue 14, items 1 and 4: group regions and label placement.
    /** The row packing of before issue 14, for comparison (URL `layout=old`, read once: the bench). */
    this.legacyLayout = new URLSearchParams(location.search).get("layout") === "old";
    /** The last layout's regions: {keys, parentKeys, list (x, y, r per key)}, or null. */
    this.regions = null;
    /** What the last frame drew: outlines and labels in viewport pixels (the hooks read them). */
    this.drawn = { outlines: [], labels: [] };
    /** Node ids by label importance (traffic, then degree), per scene. */
    this.labelOrder = [];
    this.positions = new Map(); // view -> Map(node id -> [x, y]), kept across days and filters
    this.focus = { focus: null, marked: null };
    this.hovered = null;
    this.renderer = null;
    this.runId = 0;
    this.loadSeq = 0;
    this.layout = { state: "idle", iterations: 0, maxIterations: 0, millis: 0, startedAt: 0, settledAt: 0 };
    this.ready = false;
    this.searchHits = [];
    // While a big map is laid out, its links are not drawn: the moving nodes show the progress,
    // and drawing 50,000 links per update would take the CPU from the layout.
    this.reducers = makeReducers(
      () => this.scene.graph,
      () => (this.layout.state === "running" && this.scene.graph.size > BIG_MAP_LINKS ? { ...this.focus, edgesHidden: true } : this.focus),
      () => this.pinned,
    );
    // ---- issue 14 items 2 and 3 (v14-links): bundles, top N links, group focus. The links'
    // reducer also hides what a bundle stands for and what the top-N limit leaves out, and fades
    // the links inside a collapsed group.
    this.linkView = EMPTY_LINK_VIEW;
    this.linkCache = { top: null, bundles: null };
    this.hoveredBundle = null;
    const focusEdge = this.reducers.edgeReducer;
    this.reducers.edgeReducer = (edge, data) => this.linkReducer(edge, focusEdge(edge, data));
    // ---- end issue 14 items 2 and 3 ----
    /** Ids of the pinned nodes (state.pins), for the reducers. */
    this.pinned = new Set(this.state.pins.map((p) => p[0]));
    /** The node being dragged, if any: layout progress leaves it where the pointer is. */
    this.dragging = null;
    /** `[viewer]` of the collector (suppression presets); null until loaded or when absent. */
    this.viewerConfig = null;
    this.controls = new Controls(this);
    this.panels = new Panels(this);
    this.exports = new Exports(this);
    exposeHooks(this);
  }

  async start() {
    this.controls.bind();
    this.exports.bind();
    this.bindAuth();
    this.controls.sync();
    await this.loadDays();
  }

  // ---------------------------------------------------------------- read token

  /** The read-token form and the "forget token" control. */
  bindAuth() {
    $("#auth-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("#auth-token").value.trim();
      if (!token) return;
      setReadToken(token);
      $("#auth").hidden = true;
      this.syncAuth();
      this.loadDays();
    });
    $("#forget-token").addEventListener("click", () => {
      forgetReadToken();
      this.syncAuth();
      location.reload();
    });
    this.syncAuth();
  }

  syncAuth() {
    $("#forget-token").hidden = !readToken();
  }

  /** Shows the read-token form; a token that was refused is dropped. */
  askToken(e) {
    const refused = readToken() !== null;
    forgetReadToken();
    this.syncAuth();
    this.panels.hideBanner();
    const msg = $("#auth-error");
    msg.textContent = refused ? `The collector refused the token: ${e.message}` : "";
    msg.hidden = !refused;
    $("#auth-token").value = "";
    $("#auth").hidden = false;
    $("#auth-token").focus();
  }

  async loadDays() {
    try {
      this.days = await fetchDays();
    } catch (e) {
      if (e instanceof AuthRequired) return this.askToken(e);
      this.panels.showBanner(`Cannot load the list of days: ${e.message}`);
      return;
    }
    if (this.days.length === 0) {
      this.panels.showBanner("The collector has no maps yet: agents report every minute, and the first daily map appears after the first day.", "info");
      return;
    }
    this.controls.fillDayPickers();
    await Promise.all([this.load(), this.loadViewerConfig()]);
  }

  /** The collector's viewer settings; an older collector without them leaves the presets off. */
  async loadViewerConfig() {
    try {
      this.viewerConfig = await fetchViewerConfig();
    } catch (e) {
      this.viewerConfig = null;
      if (!(e instanceof ApiError)) throw e;
      console.warn("no viewer settings from the collector:", e.message);
    }
    this.controls.fillPresets();
  }

  // ---------------------------------------------------------------- state and URL

  /**
   * Applies any partial state change, and redoes what the EFFECTS table (state.js) says for the
   * keys it changes: reload the map, rebuild the scene (and re-run the layout), or refocus.
   */
  async set(patch) {
    const how = effectsOf(patch);
    Object.assign(this.state, patch);
    // A new map is a new history entry: Back returns to the previous one.
    this.writeUrl(how.reload);
    this.controls.sync();
    if (how.reload) await this.load();
    else if (how.rebuild) this.rebuild({ relayout: how.relayout });
    else if (how.refocus) this.refocus();
  }

  writeUrl(push) {
    const q = serializeState(this.state);
    const url = `${location.pathname}${q ? `?${q}` : ""}`;
    if (url === `${location.pathname}${location.search}`) return;
    if (push) history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  }

  // ---------------------------------------------------------------- data

  /** Fetches the map(s) the state asks for, then rebuilds and lays out. */
  async load() {
    const seq = ++this.loadSeq;
    const s = this.state;
    this.ready = false;
    this.panels.hideBanner();
    let doc;
    let problems = [];
    try {
      if (s.mode === "diff") {
        const [before, after] = await Promise.all([fetchMap(mapQuery({ ...s, mode: "day" }, s.base)), fetchMap(mapQuery({ ...s, mode: "day" }, s.day))]);
        doc = diffMaps(before.doc, after.doc);
        problems = before.problems.concat(after.problems);
      } else {
        const r = await fetchMap(mapQuery(s, s.day));
        doc = r.doc;
        problems = r.problems;
      }
    } catch (e) {
      if (seq !== this.loadSeq) return;
      if (e instanceof AuthRequired) {
        this.clearMap();
        return this.askToken(e);
      }
      this.panels.showBanner(e instanceof ApiError ? `Cannot load the map: ${e.message}` : `Cannot load the map: ${e}`);
      this.clearMap();
      return;
    }
    if (seq !== this.loadSeq) return; // a newer request won
    if (problems.length) this.panels.showBanner(`This map has ${problems.length} problem(s); the affected links are left out: ${problems[0]}`, "info");
    else if (Array.isArray(doc.warnings) && doc.warnings.length) this.panels.showBanner(`The collector notes: ${doc.warnings.join("; ")}`, "info");
    const index = indexMap(doc);
    this.data = { doc, index, pal: palettes(doc), query: mapQuery(s, s.day) };
    this.controls.fillFilterLists();
    this.rebuild({ relayout: true });
  }

  clearMap() {
    this.data = null;
    if (this.renderer) {
      this.renderer.kill();
      this.renderer = null;
    }
    this.panels.updateStatus();
  }

  // ---------------------------------------------------------------- building the scene

  rebuild({ relayout }) {
    if (!this.data) return;
    const s = this.state;
    const { index, pal } = this.data;
    this.filtered = applyFilters(index, {
      hideEnvs: s.hideEnv,
      hideArchs: s.hideArch,
      envRe: s.envRe,
      archRe: s.archRe,
      minBytes: s.minBytes,
      onlyChanges: s.mode === "diff" && s.changes,
      hideNodes: s.hideNodes,
    });
    if (!this.positions.has(s.view)) this.positions.set(s.view, new Map());
    const known = this.positions.get(s.view);
    // While a layout runs, the graph holds fresher positions than the cache.
    if (this.scene && this.layout.state === "running") this.scene.graph.forEachNode((id, a) => known.set(id, [a.x, a.y]));
    // A pinned node is where its pin says (pins of other views' ids are simply not drawn).
    this.pinned = new Set(s.pins.map((p) => p[0]));
    for (const [id, x, y] of s.pins) known.set(id, [x, y]);
    const frame = $("#map");
    this.scene = buildGraph(index, this.filtered, s, pal, known, { width: frame.clientWidth, height: frame.clientHeight });
    const grouping = { mode: s.group, level: s.level, splitEnv: s.split };
    this.groupOf = new Map();
    for (const id of this.filtered.nodes) {
      const k = groupKey(index.byId.get(id), grouping);
      if (k !== null) this.groupOf.set(id, k);
    }
    this.ensureRenderer();
    this.refocus(false);
    this.panels.updateLegend();
    this.panels.updateFilterSummary();
    const unplaced = this.scene.graph.nodes().some((id) => !known.has(id));
    if (relayout || unplaced) this.startLayout();
    else {
      this.updateHulls();
      this.renderer.refresh();
      this.markReady();
    }
    this.panels.updateStatus();
    this.panels.renderDetails();
    this.controls.sync();
  }

  ensureRenderer() {
    const graph = this.scene.graph;
    if (this.renderer) {
      if (this.renderer.kind === "webgl") this.renderer.sigma.setGraph(graph);
      else this.renderer.graph = graph;
      this.renderer.refresh();
      return;
    }
    const container = $("#map-view");
    const opts = {
      nodeReducer: this.reducers.nodeReducer,
      edgeReducer: this.reducers.edgeReducer,
      drawOverlay: (ctx, r, phase) => {
        const target = new CanvasTarget(ctx);
        // issue 14 item 2 (v14-links): bundles over the nodes (translucent: on a dense map the
        // nodes would hide them), under the names and labels; their counts over everything.
        if (phase === "over") this.drawBundles(target, r, "lines");
        this.drawLayers(target, r, phase);
        if (phase === "over") this.drawBundles(target, r, "counts");
      },
    };
    const gl = webglAvailable();
    // Software WebGL (SwiftShader, llvmpipe) draws slower than Canvas 2D: use WebGL only on a
    // real GPU, unless the URL asks for it (renderer=webgl).
    if (this.state.renderer === "webgl" ? gl.available : this.state.renderer === "auto" && gl.available && !gl.software) {
      try {
        this.renderer = new SigmaRenderer(container, graph, opts);
      } catch (e) {
        console.warn("WebGL renderer failed, using the canvas renderer:", e);
      }
    }
    if (!this.renderer) {
      this.rendererWhy = !gl.available ? "Canvas 2D (no WebGL)" : gl.software ? "Canvas 2D (WebGL is software-only here)" : "Canvas 2D";
      this.renderer = new CanvasRenderer(container, graph, opts);
    }
    const r = this.renderer;
    this.camera = new CameraController($("#map"), container, r);
    this.camera.onStart = () => this.panels.hideTooltip();
    r.on("afterRender", () => {
      const next = this.afterFrame;
      this.afterFrame = null;
      // After this frame has been composited, not inside it.
      if (next) setTimeout(next, 0);
    });
    r.on("enterNode", ({ node }) => {
      if (this.camera.moving) return;
      this.hovered = node;
      this.panels.showNodeTooltip(node);
      if (!this.focus.marked) this.refocus(false);
    });
    r.on("leaveNode", () => {
      this.hovered = null;
      this.panels.hideTooltip();
      if (!this.focus.marked) this.refocus(false);
    });
    // A drag ends with a click event; it moved the map and must not change the selection.
    r.on("clickNode", ({ node }) => this.camera.justDragged() || this.select(node));
    r.on("clickStage", (e) => {
      // issue 14 item 3 (v14-links): a click on a group's outline or name selects the group.
      if (!this.camera.justDragged() && this.clickGroupAt(e)) return;
      if (!this.camera.justDragged() && (this.state.sel || this.state.gsel || this.linkSel)) this.select(null);
    });
    r.on("enterEdge", ({ edge }) => this.camera.moving || this.panels.showEdgeTooltip(edge));
    r.on("leaveEdge", () => this.panels.hideTooltip());
    r.on("clickEdge", ({ edge }) => this.camera.justDragged() || this.selectLink(edge));
    // Drag a node to pin it there; double-click it to release it (the old tool's gestures).
    this.camera.nodeAt = (p) => this.nodeAtPoint(p);
    this.camera.onNodeDrag = (id, p, phase) => this.dragNode(id, p, phase);
    this.camera.onNodeDoubleClick = (id) => this.unpin(id);
    // ---- issue 14 items 2 and 3 (v14-links): semantic zoom and bundle hover ----
    // Zooming past BUNDLE_RATIO collapses or expands the groups: checked after each frame (the
    // camera has settled by then), redrawn once when the answer changes.
    r.on("afterRender", () => {
      if (this.zoomCheck || !this.scene || this.collapsedWanted() === this.linkView.collapsed) return;
      // Outside the frame that noticed it.
      this.zoomCheck = setTimeout(() => {
        this.zoomCheck = 0;
        if (!this.scene || this.collapsedWanted() === this.linkView.collapsed) return;
        this.updateLinkView();
        this.renderer.refresh();
        this.panels.updateStatus();
      }, 0);
    });
    container.addEventListener("mousemove", (e) => this.hoverBundleAt(e));
    container.addEventListener("mouseleave", () => this.hoverBundle(null));
    // ---- end issue 14 items 2 and 3 ----
  }

  /** The node drawn under a viewport point (the closest whose disc holds it), or null. */
  nodeAtPoint(p) {
    const r = this.renderer;
    let best = null;
    let bestD = Infinity;
    this.scene.graph.forEachNode((id, a) => {
      const v = r.graphToViewport(a);
      const d = Math.hypot(v.x - p.x, v.y - p.y);
      if (d <= Math.max(r.scaleSize(a.size), 4) && d < bestD) {
        best = id;
        bestD = d;
      }
    });
    return best;
  }

  /** A node dragged to viewport point `p` (`phase`: start, move, end): it follows, then is pinned. */
  dragNode(id, p, phase) {
    if (!this.scene?.graph.hasNode(id)) return;
    const r = this.renderer;
    if (phase === "start") {
      this.dragging = id;
      // Hold the framing still while a node moves, or the whole map would shift under it.
      r.freezeFraming(true);
      this.panels.hideTooltip();
      return;
    }
    const g = this.clampToRegion(id, r.viewportToGraph(p));
    this.scene.graph.mergeNodeAttributes(id, { x: g.x, y: g.y });
    r.refreshPositions();
    if (phase === "end") {
      this.dragging = null;
      this.pin(id, g.x, g.y);
      r.freezeFraming(false);
      this.updateHulls();
      r.refresh();
    }
  }

  /** Pins a node at graph point (x, y): the layout leaves it there; kept in the URL. */
  pin(id, x, y) {
    const pins = withPin(this.state.pins, id, x, y);
    const p = pins.find((q) => q[0] === id);
    if (p && this.scene.graph.hasNode(id)) {
      this.scene.graph.mergeNodeAttributes(id, { x: p[1], y: p[2] });
      this.positions.get(this.state.view)?.set(id, [p[1], p[2]]);
    }
    this.setPins(pins);
  }

  unpin(id) {
    if (!this.pinned.has(id)) return;
    this.setPins(withoutPin(this.state.pins, id));
  }

  setPins(pins) {
    this.set({ pins });
    this.pinned = new Set(pins.map((q) => q[0]));
    this.renderer?.refresh();
    this.panels.updateLegend();
    // A running layout takes the change at once: it restarts from where the nodes are (the
    // graph holds fresher positions than the cache while it runs).
    if (this.layout.state === "running") {
      const known = this.positions.get(this.state.view);
      this.scene.graph.forEachNode((id, a) => known.set(id, [a.x, a.y]));
      this.startLayout();
    }
  }

  // ---------------------------------------------------------------- layout

  layoutInput() {
    const graph = this.scene.graph;
    const s = this.state;
    const ids = graph.nodes();
    const n = ids.length;
    const at = new Map(ids.map((id, i) => [id, i]));
    const known = this.positions.get(s.view);
    const x = new Float32Array(n);
    const y = new Float32Array(n);
    ids.forEach((id, i) => {
      const p = known.get(id);
      x[i] = p ? p[0] : NaN;
      y[i] = p ? p[1] : NaN;
    });
    const keys = [...new Set(this.groupOf.values())].sort(compareGroups);
    const gi = new Map(keys.map((k, i) => [k, i]));
    const group = Int32Array.from(ids, (id) => (this.groupOf.has(id) ? gi.get(this.groupOf.get(id)) : -1));
    // With archdomains split by env, each env starts its own row of groups: env focus bands.
    const breakBefore = Uint8Array.from(keys, (k, i) => (i > 0 && s.group === "archdomain" && s.split && groupEnv(k) !== groupEnv(keys[i - 1]) ? 1 : 0));
    const m = graph.size;
    const src = new Uint32Array(m);
    const dst = new Uint32Array(m);
    const bytes = new Float64Array(m);
    let e = 0;
    graph.forEachEdge((key, _a, sId, tId) => {
      src[e] = at.get(sId);
      dst[e] = at.get(tId);
      bytes[e] = linkBytes(this.data.index.links[Number(key)]);
      e++;
    });
    const sizes = Float32Array.from(ids, (id) => graph.getNodeAttribute(id, "size"));
    const viewport = this.renderer ? this.renderer.getDimensions() : { width: 1000, height: 800 };
    const fixed = Uint8Array.from(ids, (id) => (this.pinned.has(id) ? 1 : 0));
    // Issue 14, item 1: regions, nested in env regions when split by env.
    const parentKeys = s.group === "archdomain" && s.split ? [...new Set(keys.map(groupEnv).filter((e) => e !== null))].map((e) => `env:${e}`) : [];
    const pi = new Map(parentKeys.map((k, i) => [k.slice(4), i]));
    const parent = Int32Array.from(keys, (k) => (groupEnv(k) !== null && pi.has(groupEnv(k)) ? pi.get(groupEnv(k)) : -1));
    this.pendingRegionKeys = { keys, parentKeys };
    const packing = this.legacyLayout ? "rows" : "regions";
    return { ids, x, y, group, groupCount: keys.length, breakBefore, src, dst, bytes, influence: s.influence, sizes, viewport, fixed, parent, parentCount: parentKeys.length, packing };
  }

  startLayout() {
    const runId = ++this.runId;
    const input = this.layoutInput();
    const regionKeys = this.pendingRegionKeys;
    this.ready = false;
    this.layout = { state: "running", iterations: 0, maxIterations: 0, millis: 0, startedAt: performance.now(), settledAt: 0 };
    this.panels.showProgress(0, 1);
    this.controls.syncLayoutButton();
    const onMessage = (msg) => {
      if (msg.runId !== this.runId) return;
      this.layout.iterations = msg.iterations;
      this.layout.maxIterations = msg.maxIterations;
      this.regions = msg.regions ? { ...regionKeys, list: msg.regions } : null;
      if (msg.type === "progress") {
        // Back-pressure: draw the newest positions once the previous ones are on screen, so a
        // big map that takes long to draw does not queue up frames behind the layout.
        this.pendingProgress = msg;
        this.panels.showProgress(msg.iterations, msg.maxIterations);
        if (!this.awaitingFrame) this.applyPending(input.ids);
        return;
      }
      this.pendingProgress = null;
      this.layout.state = "settled";
      this.applyPositions(input.ids, msg.positions);
      // A full refresh: the links hidden during the layout come back (reducers run again).
      this.renderer.refresh();
      this.layout.millis = performance.now() - this.layout.startedAt;
      this.layout.budgetSpent = !!msg.budgetSpent;
      this.layout.settledAt = performance.now();
      const known = this.positions.get(this.state.view);
      this.scene.graph.forEachNode((id, a) => known.set(id, [a.x, a.y]));
      this.panels.hideProgress();
      this.panels.updateStatus();
      this.controls.syncLayoutButton();
      this.markReady();
    };
    if (this.worker === undefined) {
      try {
        this.worker = new Worker(new URL(__WORKER_URL__, document.baseURI));
        this.worker.onmessage = (ev) => this.onWorkerMessage?.(ev.data);
        this.worker.onerror = (ev) => {
          // The worker could not run (blocked by policy, say): lay out on the main thread.
          ev.preventDefault();
          console.warn("layout worker failed, laying out on the main thread:", ev.message);
          this.worker = null;
          this.startLayout();
        };
      } catch (e) {
        console.warn("no layout worker, laying out on the main thread:", e);
        this.worker = null;
      }
    }
    this.onWorkerMessage = onMessage;
    if (this.worker) {
      const transfer = [input.x.buffer, input.y.buffer, input.group.buffer, input.src.buffer, input.dst.buffer, input.bytes.buffer, input.sizes.buffer, input.fixed.buffer, input.parent.buffer];
      // The ids and group keys stay here; the worker needs them for seeding only.
      this.worker.postMessage({ type: "start", runId, input }, transfer);
    } else {
      this.mainThreadRun?.stop();
      this.mainThreadRun = runLayout(input, {
        post: (out) => onMessage({ ...out, runId }),
        schedule: (fn) => setTimeout(fn, 0),
      });
    }
  }

  /**
   * Pauses a running layout where the nodes are (the old tool's Pause), or, when paused or
   * settled, runs it again from there (Resume), pins held.
   */
  toggleLayout() {
    if (!this.scene) return;
    if (this.layout.state === "running") this.pauseLayout();
    else this.startLayout();
  }

  pauseLayout() {
    if (this.layout.state !== "running") return;
    // Messages of the stopped run are ignored from now on.
    this.worker?.postMessage({ type: "stop", runId: this.runId });
    this.mainThreadRun?.stop();
    this.runId++;
    this.pendingProgress = null;
    this.layout.state = "paused";
    this.layout.millis = performance.now() - this.layout.startedAt;
    const known = this.positions.get(this.state.view);
    this.scene.graph.forEachNode((id, a) => known.set(id, [a.x, a.y]));
    this.updateHulls();
    // A full refresh: the links hidden while a big map is laid out come back.
    this.renderer.refresh();
    this.panels.hideProgress();
    this.panels.updateStatus();
    this.controls.syncLayoutButton();
    this.markReady();
  }

  applyPending(ids) {
    const msg = this.pendingProgress;
    if (!msg || msg.runId !== this.runId) return;
    this.pendingProgress = null;
    this.awaitingFrame = true;
    this.applyPositions(ids, msg.positions);
    // The next update waits for this one to be drawn, and then for three times as long as drawing
    // took, so that drawing a big map leaves the worker most of the machine.
    const t0 = performance.now();
    this.afterFrame = () => {
      setTimeout(() => {
        this.awaitingFrame = false;
        this.applyPending(ids);
      }, Math.max(100, 3 * (performance.now() - t0)));
    };
  }

  applyPositions(ids, pos) {
    const graph = this.scene.graph;
    if (graph.order !== ids.length) return;
    const at = new Map(ids.map((id, i) => [id, i]));
    graph.updateEachNodeAttributes(
      (id, a) => {
        const i = at.get(id);
        // The node under the pointer stays there, and a pinned one exactly at its pin (the
        // layout's Float32 positions would round it).
        if (i !== undefined && id !== this.dragging && !this.pinned.has(id)) {
          a.x = pos[2 * i];
          a.y = pos[2 * i + 1];
        }
        return a;
      },
      { attributes: ["x", "y"] },
    );
    this.updateHulls();
    this.renderer.refreshPositions();
  }

  // ---------------------------------------------------------------- issue 14, items 1 and 4: regions and labels

  /**
   * The group outlines: the layout's regions when it packed them for exactly these groups, else
   * (no grouping, the old layout) hulls of the members.
   */
  updateHulls() {
    const rg = this.regions;
    const keys = new Set(this.groupOf.values());
    if (rg && keys.size && [...keys].every((k) => rg.keys.includes(k))) this.hulls = regionHulls(this.scene.graph, this.groupOf, rg.keys, rg.parentKeys, rg.list);
    else this.hulls = groupHulls(this.scene.graph, this.groupOf);
    // Node label importance: traffic, then degree, then id (stable across frames).
    if (this.labelScene !== this.scene) {
      this.labelScene = this.scene;
      const { index } = this.data;
      const graph = this.scene.graph;
      const weight = (id) => {
        const n = index.byId.get(id);
        return (n?.bytes_in ?? 0) + (n?.bytes_out ?? 0);
      };
      this.labelOrder = graph.nodes().sort((a, b) => weight(b) - weight(a) || graph.degree(b) - graph.degree(a) || (a < b ? -1 : 1));
    }
  }

  /** A dragged node stays inside its group's region (graph point `g`, returns the clamped one). */
  clampToRegion(id, g) {
    const h = this.hulls.find((x) => x.circle && !x.parent && x.key === this.groupOf.get(id));
    if (!h) return g;
    const r = this.renderer;
    const c = h.circle;
    const px = Math.hypot(r.graphToViewport({ x: c.x + c.r, y: c.y }).x - r.graphToViewport(c).x, 0) / c.r || 1;
    const size = r.scaleSize(this.scene.graph.getNodeAttribute(id, "size")) / px;
    const lim = Math.max(c.r - 1.3 * size, 0.3 * c.r);
    const dx = g.x - c.x, dy = g.y - c.y;
    const d = Math.hypot(dx, dy);
    return d <= lim ? g : { x: c.x + (dx * lim) / d, y: c.y + (dy * lim) / d };
  }

  /**
   * Paints the app's layers of a frame through `target`: outlines under the links ("under"),
   * names and labels over the nodes ("over"). Records what was drawn for the hooks.
   */
  drawLayers(target, r, phase) {
    if (!this.scene || !this.data) return;
    const toViewport = (p) => r.graphToViewport(p);
    const regions = this.hulls.length > 0 && this.hulls[0].circle !== undefined;
    if (phase === "under") {
      if (regions) this.drawn.outlines = drawRegionOutlines(target, this.hulls, toViewport, this.data.pal);
      else {
        this.drawn.outlines = [];
        if (this.hulls.length) this.drawn.outlines = drawGroups(target, this.hulls, toViewport, (x) => r.scaleSize(x), this.data.pal, { outlines: true, names: false }) ?? [];
      }
      return;
    }
    if (!regions && this.hulls.length) drawGroups(target, this.hulls, toViewport, (x) => r.scaleSize(x), this.data.pal, { outlines: false, names: true });
    const { width, height } = r.getDimensions();
    const nodes = [];
    const marked = this.focus.marked;
    this.scene.graph.forEachNode((id, a) => {
      const d = this.reducers.nodeReducer(id, a);
      if (d.hidden) return;
      const p = r.graphToViewport(a);
      nodes.push({ id, x: p.x, y: p.y, r: r.scaleSize(d.size), label: d.label, forced: !!d.forceLabel, marked: !!marked?.has(id) });
    });
    const labels = drawLabels(target, { nodes, order: this.labelOrder, outlines: regions ? this.drawn.outlines : [], width, height });
    // With hulls (no regions) the names come from drawGroups, which keeps its own placement.
    this.drawn.labels = labels;
    if (r.lastDrawn) r.lastDrawn.labels = labels.filter((l) => l.id !== undefined).length;
  }

  markReady() {
    // Ready once a frame with the final positions has been drawn.
    requestAnimationFrame(() =>
      requestAnimationFrame(() => {
        this.ready = true;
        this.panels.updateStatus();
        document.body.dataset.ready = "1";
      }),
    );
    document.body.dataset.ready = "0";
  }

  // ---------------------------------------------------------------- highlight, search, selection

  /** Recomputes the highlighted set from the selection, the search, or the hovered node. */
  refocus(reframe = false) {
    if (!this.scene) return;
    const s = this.state;
    const { index } = this.data;
    const visible = this.filtered.nodes.filter((id) => this.scene.graph.hasNode(id));
    this.searchHits = s.q ? searchNodes(index, s.q, visible) : [];
    const sel = s.sel && this.scene.graph.hasNode(s.sel) ? s.sel : null;
    let marked = null;
    if (sel) marked = [sel];
    else if (s.q) marked = this.searchHits;
    else if (this.linkSel && this.scene.graph.hasEdge(this.linkSel)) marked = this.scene.graph.extremities(this.linkSel);
    if (marked) {
      this.focus = { focus: withNeighbours(index, marked, this.filtered.links), marked: new Set(marked) };
      if (this.linkSel && !sel && !s.q) this.focus.focus = new Set(marked);
    } else if (this.hovered && this.scene.graph.hasNode(this.hovered)) {
      this.focus = { focus: withNeighbours(index, [this.hovered], this.filtered.links), marked: null };
    } else {
      this.focus = { focus: null, marked: null };
    }
    // issue 14 item 3 (v14-links): a selected group highlights its members and their peers.
    // `marked` is empty but set (hovering does not take the focus over), so members get no
    // forced labels: a big group's names would bury the map.
    const members = !sel && !s.q ? this.groupMembers(s.gsel) : null;
    if (members) this.focus = { focus: withNeighbours(index, members, this.filtered.links), marked: new Set(), group: s.gsel };
    const said = JSON.stringify([this.linkStats(), s.top, s.gsel]);
    this.updateLinkView();
    if (JSON.stringify([this.linkStats(), s.top, s.gsel]) !== said) this.panels.updateStatus();
    this.renderer?.refresh();
    this.controls.updateSearchResults();
    if (reframe && marked?.length) this.focusNodes([...this.focus.focus]);
  }

  /** Animates the camera to frame the given nodes (a search result, a selection). */
  focusNodes(nodes, duration = 400) {
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (const n of nodes) {
      const d = this.renderer.nodeDisplay(n);
      if (!d) continue;
      minX = Math.min(minX, d.x);
      maxX = Math.max(maxX, d.x);
      minY = Math.min(minY, d.y);
      maxY = Math.max(maxY, d.y);
    }
    if (!Number.isFinite(minX)) return Promise.resolve();
    const ratio = Math.min(1, Math.max(0.08, Math.max(maxX - minX, maxY - minY) * 1.4));
    return this.camera.animateTo({ x: (minX + maxX) / 2, y: (minY + maxY) / 2, ratio }, duration);
  }

  select(id, reframe = false) {
    this.linkSel = null;
    // A node selection replaces a group selection (issue 14, v14-links).
    this.set(this.state.gsel ? { sel: id, gsel: null } : { sel: id });
    this.refocus(reframe);
    this.panels.renderDetails();
  }

  selectLink(edge) {
    this.linkSel = edge;
    this.state.sel = null;
    this.writeUrl(false);
    this.refocus(false);
    this.panels.renderDetails();
  }
}

// ---- issue 14 items 2 and 3 (v14-links): bundles, semantic zoom, top N, group focus ----

const EMPTY_LINK_VIEW = Object.freeze({ bundling: false, collapsed: false, expanded: new Set(), bundles: [], bundlesHidden: 0, bundled: new Set(), faded: new Set(), topHidden: new Set(), limit: null, total: 0 });
/** Bundles: the neutral link colour, translucent (they are drawn over the nodes). */
const BUNDLE_COLOR = withAlpha(EDGE_NEUTRAL, 0.55);
const BUNDLE_HOT = withAlpha("#374151", 0.8);
/** Bundle counts written at most. */
const MAX_BUNDLE_COUNTS = 40;
const FADED_EDGE = DIMMED_EDGE;

Object.assign(App.prototype, {
  /** Whether the groups should be collapsed into bundles now (bundling on, zoomed out). */
  collapsedWanted() {
    const on = bundlingOn(this.state.bundle, this.groupOf.size > 0, this.scene.graph.size);
    return on && (this.renderer?.cameraRatio() ?? 1) > BUNDLE_RATIO;
  },

  /** Members of a group shown on the map, or null when there is no such group. */
  groupMembers(key) {
    if (!key) return null;
    const out = [];
    for (const [id, k] of this.groupOf) if (k === key && this.scene.graph.hasNode(id)) out.push(id);
    return out.length ? out : null;
  },

  /** Recomputes what is bundled, faded and left out by the top-N limit (cached per scene). */
  updateLinkView() {
    if (!this.scene || !this.data) return;
    const s = this.state;
    const graph = this.scene.graph;
    const { index } = this.data;
    const bundling = bundlingOn(s.bundle, this.groupOf.size > 0, graph.size);
    const collapsed = this.collapsedWanted();
    const limit = linkLimit(graph.size, s.top);
    let top = this.linkCache.top;
    if (!top || top.scene !== this.scene || top.limit !== limit) {
      const items = graph.mapEdges((key) => ({ key, bytes: linkBytes(index.links[Number(key)]) }));
      top = this.linkCache.top = { scene: this.scene, limit, hidden: topHidden(items, limit) };
    }
    const expanded = new Set();
    if (collapsed) {
      if (s.gsel) expanded.add(s.gsel);
      const sg = s.sel ? this.groupOf.get(s.sel) : undefined;
      if (sg !== undefined) expanded.add(sg);
    }
    const ekey = `${collapsed}|${[...expanded].sort().join("\u0000")}`;
    let b = this.linkCache.bundles;
    if (!b || b.scene !== this.scene || b.key !== ekey) {
      let built = { bundles: [], bundled: new Set(), faded: new Set() };
      if (collapsed) {
        const links = this.filtered.links.map((i) => ({ i, source: index.links[i].source, target: index.links[i].target, bytes: linkBytes(index.links[i]) }));
        built = buildBundles(links, this.groupOf, expanded);
        const [lo, hi] = this.scene.scales.edge;
        // The links' scale without the thinning of dense maps: bundles are few.
        for (const x of built.bundles) x.width = bundleWidth(x.bytes, { lo: Number.isFinite(lo) ? lo : 1, hi, min: EDGE_MIN, max: EDGE_MAX, density: 1 });
      }
      b = this.linkCache.bundles = { scene: this.scene, key: ekey, ...built };
    }
    const shown = limit === null ? b.bundles : b.bundles.slice(0, limit);
    this.linkView = { bundling, collapsed, expanded: collapsed ? expanded : new Set(), bundles: shown, bundlesHidden: b.bundles.length - shown.length, bundled: b.bundled, faded: b.faded, topHidden: top.hidden, limit, total: graph.size };
  },

  /** The links' reducer after the focus one: bundled and top-N links hidden, inner ones faded. */
  linkReducer(edge, d) {
    const v = this.linkView;
    if (d.hidden) return d;
    if (v.topHidden.has(edge) || v.bundled.has(Number(edge))) return { ...d, hidden: true };
    if (v.faded.has(Number(edge)) && !(this.focus.focus && d.zIndex === 1)) return { ...d, color: FADED_EDGE, size: d.size * 0.6, zIndex: 0 };
    return d;
  },

  /** Counts for the status line and the hooks. */
  linkStats() {
    const v = this.linkView;
    return {
      linksShown: v.total - v.topHidden.size,
      linksHidden: v.topHidden.size,
      linksBundled: v.bundled.size,
      linksFaded: v.faded.size,
      bundlesShown: v.bundles.length,
      bundlesHidden: v.bundlesHidden,
      collapsed: v.collapsed,
      expanded: [...v.expanded].sort(),
    };
  },

  /** Viewport centres of the groups: their regions' (v14-layout), else their members' mean. */
  groupCentres(r) {
    if (this.hulls.length && this.hulls[0].circle !== undefined) {
      const out = new Map();
      for (const h of this.hulls) if (!h.parent) out.set(h.key, r.graphToViewport({ x: h.circle.x, y: h.circle.y }));
      return out;
    }
    const acc = new Map();
    this.scene.graph.forEachNode((id, a) => {
      const k = this.groupOf.get(id);
      if (k === undefined) return;
      let c = acc.get(k);
      if (!c) acc.set(k, (c = [0, 0, 0]));
      c[0] += a.x;
      c[1] += a.y;
      c[2]++;
    });
    const out = new Map();
    for (const [k, [x, y, n]] of acc) out.set(k, r.graphToViewport({ x: x / n, y: y / n }));
    return out;
  },

  /** Bundles as drawn: [{bundle, a, b, w}] in viewport pixels. */
  bundleSegments(r) {
    if (!this.linkView.collapsed || !this.linkView.bundles.length) return [];
    const centres = this.groupCentres(r);
    const out = [];
    for (const bundle of this.linkView.bundles) {
      const a = centres.get(bundle.source);
      const b = centres.get(bundle.target);
      if (a && b) out.push({ bundle, a, b, w: Math.max(r.scaleSize(bundle.width), 0.5) });
    }
    return out;
  },

  /**
   * Paints the bundles (canvas overlay, or an image export): `what` "lines", or "counts" (at the
   * midpoint where they fit).
   */
  drawBundles(target, r, what) {
    const segs = this.bundleSegments(r);
    if (!segs.length) return 0;
    if (what === "counts") return this.drawBundleCounts(target, segs);
    const f = this.focus.focus;
    const lit = f ? new Set([...f].map((id) => this.groupOf.get(id))) : null;
    const batches = new Map();
    for (const { bundle, a, b, w } of segs) {
      const dim = lit && !lit.has(bundle.source) && !lit.has(bundle.target);
      const hot = this.hoveredBundle === bundle.key;
      const key = `${dim ? withAlpha(FADED_EDGE, 0.7) : hot ? BUNDLE_HOT : BUNDLE_COLOR}|${(Math.round(w * 2) / 2).toFixed(1)}`;
      if (!batches.has(key)) batches.set(key, []);
      batches.get(key).push(a.x, a.y, b.x, b.y);
    }
    target.lines(batches);
    return segs.length;
  },

  drawBundleCounts(target, segs) {
    const placed = [];
    for (const { bundle, a, b } of segs) {
      const text = fmtCount(bundle.count);
      const tw = target.measure(text, 11, "600");
      const len = Math.hypot(b.x - a.x, b.y - a.y);
      // At the midpoint when the bundle is long enough and no other count is there.
      if (len < tw + 48) continue;
      // The biggest bundles' counts only (bundles come biggest first): more would be noise.
      if (placed.length >= MAX_BUNDLE_COUNTS) break;
      const mx = (a.x + b.x) / 2;
      const my = (a.y + b.y) / 2;
      const box = [mx - tw / 2 - 2, my - 7, mx + tw / 2 + 2, my + 7];
      if (placed.some((q) => box[0] < q[2] && box[2] > q[0] && box[1] < q[3] && box[3] > q[1])) continue;
      placed.push(box);
      target.text(mx, my, text, { size: 11, weight: "600", color: "#374151", halo: "#f7f8fae8", align: "center" });
    }
    return segs.length;
  },

  /** Viewport point of a renderer event (sigma's carry x, y; the canvas renderer's a MouseEvent). */
  eventPoint(ev) {
    if (ev && typeof ev.x === "number" && ev.original) return { x: ev.x, y: ev.y };
    const rect = $("#map-view").getBoundingClientRect();
    return { x: ev.clientX - rect.left, y: ev.clientY - rect.top };
  },

  /** The group whose outline or name is under viewport point p (the smallest), or null. */
  groupAt(p) {
    const r = this.renderer;
    let best = null;
    // Group names as drawn (v14-layout's label pass): a click on one selects its group.
    for (const l of this.drawn?.labels ?? []) {
      if (l.group !== undefined && p.x >= l.x && p.x <= l.x + l.w && p.y >= l.y && p.y <= l.y + l.h && this.groupMembers(l.group)) return l.group;
    }
    for (const h of this.hulls) {
      // Env regions that hold the groups of a split map are no group of their own.
      if (h.parent) continue;
      let poly;
      let onName = false;
      if (h.circle) poly = regionPolygon(h.circle, (q) => r.graphToViewport(q)).poly;
      else {
        const pad = r.scaleSize(h.maxSize) + 10;
        const ring = [];
        for (const [x, y] of h.hull) {
          const v = r.graphToViewport({ x, y });
          for (let i = 0; i < 10; i++) ring.push([v.x + Math.cos((i / 10) * 2 * Math.PI) * pad, v.y + Math.sin((i / 10) * 2 * Math.PI) * pad]);
        }
        poly = convexHull(ring);
        let top = Infinity, minX = Infinity, maxX = -Infinity;
        for (const [x, y] of poly) {
          top = Math.min(top, y);
          minX = Math.min(minX, x);
          maxX = Math.max(maxX, x);
        }
        // With hulls the name sits just above the outline.
        onName = p.y >= top - 22 && p.y <= top && p.x >= minX && p.x <= maxX;
      }
      if ((onName || pointInPolygon(p, poly)) && (!best || h.count < best.count)) best = h;
    }
    return best ? best.key : null;
  },

  /** A stage click: selects the group there (a second click releases it); false when none. */
  clickGroupAt(e) {
    if (!e?.event || !this.hulls.length) return false;
    const key = this.groupAt(this.eventPoint(e.event));
    if (key === null) return false;
    this.selectGroup(key === this.state.gsel ? null : key);
    return true;
  },

  /** Selects a group (null: none): expanded to its hosts, its neighbourhood highlighted. */
  selectGroup(key) {
    this.linkSel = null;
    this.set({ gsel: key, sel: null });
    this.refocus(false);
    this.panels.renderDetails();
    this.panels.updateStatus();
  },

  /** Pointer over the map: the bundle under it (if no node is) shows its biggest links. */
  hoverBundleAt(e) {
    if (e.buttons || this.camera?.moving || !this.renderer || !this.linkView.collapsed) return this.hoverBundle(null);
    if (this.hovered) return this.hoverBundle(null);
    const rect = $("#map-view").getBoundingClientRect();
    const p = { x: e.clientX - rect.left, y: e.clientY - rect.top };
    let best = null;
    let bestD = Infinity;
    for (const sg of this.bundleSegments(this.renderer)) {
      const d = segmentDistance(p, sg.a, sg.b);
      if (d <= Math.max(sg.w / 2, 4) && d < bestD) {
        best = sg;
        bestD = d;
      }
    }
    this.hoverBundle(best ? best.bundle : null, p);
  },

  hoverBundle(bundle, p) {
    const key = bundle ? bundle.key : null;
    if (key === this.hoveredBundle) return;
    const had = this.hoveredBundle !== null;
    this.hoveredBundle = key;
    if (bundle) this.panels.showBundleTooltip(bundle, this.renderer.viewportToGraph(p));
    else if (had) this.panels.hideTooltip();
    // The hovered bundle is drawn darker: only the overlay changes.
    if (this.renderer?.kind === "webgl") this.renderer.paintOverlay();
    else this.renderer?.refresh();
  },
});

// ---- end issue 14 items 2 and 3 ----

const app = new App();
app.start().catch((e) => {
  // Unexpected: show it, and let the console have it too (the tests treat it as a failure).
  app.panels.showBanner(`The viewer failed: ${e.message}`);
  throw e;
});
