// The viewer: loads days and maps from the collector, applies filters and grouping, runs the
// layout in a worker, draws with sigma (WebGL) or the canvas fallback, and keeps every choice in
// the URL. `window.__trafficmap` exposes what is drawn, for the browser tests and the benchmark.

import "./style.css";
import { ApiError, exportUrl, fetchDays, fetchMap } from "./api.js";
import { CameraController } from "./camera.js";
import { BACKGROUND, COST_COLORS, DIFF_COLORS, EDGE_CROSS_ENV, EDGE_NEUTRAL, EXTERNAL, KIND_COLORS, UNKNOWN, tint } from "./colors.js";
import { drawGroups, groupHulls } from "./groups.js";
import { runLayout } from "./layout-run.js";
import { addDays, fmtSeen, applyFilters, archTree, compareGroups, diffMaps, envList, fmtBytes, fmtCount, fmtUsd, groupEnv, groupKey, indexMap, linkBytes, maxArchDepth, parseBytes, peersOf, searchNodes, withNeighbours, compileRegex } from "./model.js";
import { CanvasTarget, SvgTarget, paintGraph } from "./paint.js";
import { CanvasRenderer } from "./renderer-canvas.js";
import { SigmaRenderer, webglAvailable } from "./renderer-sigma.js";
import { buildGraph, makeReducers, palettes, EDGE_MAX } from "./scene.js";
import { DEFAULTS, mapQuery, parseState, serializeState } from "./state.js";

/* global __WORKER_URL__ */

const $ = (sel) => document.querySelector(sel);

/** Builds a DOM element: `h("td", {class: "num"}, "12 GB")`. Text is never parsed as HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

/** Replaces an element's children, skipping null/false (replaceChildren would print "null"). */
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/** Maps with more links than this are drawn without links while the layout runs. */
const BIG_MAP_LINKS = 10000;

const VIEW_NAMES = { instances: "Instances", clusters: "Clusters", "security-groups": "Security groups" };
const KIND_NAMES = { host: "host", unmonitored: "unmonitored host", external: "external", cluster: "cluster", security_group: "security group" };

class App {
  constructor() {
    this.state = parseState(location.search);
    this.days = [];
    this.data = null;
    this.filtered = null;
    this.scene = null;
    this.groupOf = new Map();
    this.hulls = [];
    this.positions = new Map(); // view -> Map(node id -> [x, y]), kept across days and filters
    this.focus = { focus: null, marked: null };
    this.hovered = null;
    this.renderer = null;
    this.runId = 0;
    this.loadSeq = 0;
    this.layout = { state: "idle", iterations: 0, maxIterations: 0, millis: 0, startedAt: 0, settledAt: 0 };
    this.ready = false;
    this.searchHits = [];
    this.activeResult = -1;
    // While a big map is laid out, its links are not drawn: the moving nodes show the progress,
    // and drawing 50,000 links per update would take the CPU from the layout.
    this.reducers = makeReducers(() => this.scene.graph, () => (this.layout.state === "running" && this.scene.graph.size > BIG_MAP_LINKS ? { ...this.focus, edgesHidden: true } : this.focus));
    this.exposeHooks();
  }

  async start() {
    this.bindControls();
    this.syncControls();
    try {
      this.days = await fetchDays();
    } catch (e) {
      this.showBanner(`Cannot load the list of days: ${e.message}`);
      return;
    }
    if (this.days.length === 0) {
      this.showBanner("The collector has no maps yet: agents report every minute, and the first daily map appears after the first day.", "info");
      return;
    }
    this.fillDayPickers();
    await this.load();
  }

  // ---------------------------------------------------------------- state and URL

  /** Applies a partial state change; `how` says what has to be redone. */
  async set(patch, how = {}) {
    Object.assign(this.state, patch);
    this.writeUrl(how.push);
    this.syncControls();
    if (how.reload) await this.load();
    else if (how.rebuild) this.rebuild({ relayout: !!how.relayout });
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

  fillDayPickers() {
    const s = this.state;
    if (!s.day || !this.days.includes(s.day)) s.day = this.days[0];
    if (!s.base || !this.days.includes(s.base) || s.base === s.day) s.base = this.days[this.days.indexOf(s.day) + 1] ?? this.days.find((d) => d !== s.day) ?? s.day;
    for (const sel of [$("#day"), $("#base")]) {
      sel.replaceChildren(...this.days.map((d) => h("option", { value: d }, d)));
    }
    if (!s.from) s.from = `${s.day}T00:00`;
    if (!s.to) s.to = `${addDays(s.day, 1)}T00:00`;
    this.syncControls();
    this.writeUrl(false);
  }

  /** Fetches the map(s) the state asks for, then rebuilds and lays out. */
  async load() {
    const seq = ++this.loadSeq;
    const s = this.state;
    this.ready = false;
    this.hideBanner();
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
      this.showBanner(e instanceof ApiError ? `Cannot load the map: ${e.message}` : `Cannot load the map: ${e}`);
      this.clearMap();
      return;
    }
    if (seq !== this.loadSeq) return; // a newer request won
    if (problems.length) this.showBanner(`This map has ${problems.length} problem(s); the affected links are left out: ${problems[0]}`, "info");
    else if (Array.isArray(doc.warnings) && doc.warnings.length) this.showBanner(`The collector notes: ${doc.warnings.join("; ")}`, "info");
    const index = indexMap(doc);
    this.data = { doc, index, pal: palettes(doc), query: mapQuery(s, s.day) };
    this.fillFilterLists();
    this.rebuild({ relayout: true });
  }

  clearMap() {
    this.data = null;
    if (this.renderer) {
      this.renderer.kill();
      this.renderer = null;
    }
    this.updateStatus();
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
    });
    if (!this.positions.has(s.view)) this.positions.set(s.view, new Map());
    const known = this.positions.get(s.view);
    // While a layout runs, the graph holds fresher positions than the cache.
    if (this.scene && this.layout.state === "running") this.scene.graph.forEachNode((id, a) => known.set(id, [a.x, a.y]));
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
    this.updateLegend();
    this.updateFilterSummary();
    const unplaced = this.scene.graph.nodes().some((id) => !known.has(id));
    if (relayout || unplaced) this.startLayout();
    else {
      this.hulls = groupHulls(this.scene.graph, this.groupOf);
      this.renderer.refresh();
      this.markReady();
    }
    this.updateStatus();
    this.renderDetails();
    this.syncControls();
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
      drawOverlay: (ctx, r, phase) =>
        this.hulls.length && drawGroups(new CanvasTarget(ctx), this.hulls, (p) => r.graphToViewport(p), (x) => r.scaleSize(x), this.data.pal, { outlines: phase === "under", names: phase === "over" }),
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
    this.camera.onStart = () => this.hideTooltip();
    r.on("afterRender", () => {
      const next = this.afterFrame;
      this.afterFrame = null;
      // After this frame has been composited, not inside it.
      if (next) setTimeout(next, 0);
    });
    r.on("enterNode", ({ node }) => {
      if (this.camera.moving) return;
      this.hovered = node;
      this.showNodeTooltip(node);
      if (!this.focus.marked) this.refocus(false);
    });
    r.on("leaveNode", () => {
      this.hovered = null;
      this.hideTooltip();
      if (!this.focus.marked) this.refocus(false);
    });
    // A drag ends with a click event; it moved the map and must not change the selection.
    r.on("clickNode", ({ node }) => this.camera.justDragged() || this.select(node));
    r.on("clickStage", () => {
      if (!this.camera.justDragged() && (this.state.sel || this.linkSel)) this.select(null);
    });
    r.on("enterEdge", ({ edge }) => this.camera.moving || this.showEdgeTooltip(edge));
    r.on("leaveEdge", () => this.hideTooltip());
    r.on("clickEdge", ({ edge }) => this.camera.justDragged() || this.selectLink(edge));
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
    return { ids, x, y, group, groupCount: keys.length, breakBefore, src, dst, bytes, influence: s.influence, sizes, viewport };
  }

  startLayout() {
    const runId = ++this.runId;
    const input = this.layoutInput();
    this.ready = false;
    this.layout = { state: "running", iterations: 0, maxIterations: 0, millis: 0, startedAt: performance.now(), settledAt: 0 };
    this.showProgress(0, 1);
    const onMessage = (msg) => {
      if (msg.runId !== this.runId) return;
      this.layout.iterations = msg.iterations;
      this.layout.maxIterations = msg.maxIterations;
      if (msg.type === "progress") {
        // Back-pressure: draw the newest positions once the previous ones are on screen, so a
        // big map that takes long to draw does not queue up frames behind the layout.
        this.pendingProgress = msg;
        this.showProgress(msg.iterations, msg.maxIterations);
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
      this.hideProgress();
      this.updateStatus();
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
      const transfer = [input.x.buffer, input.y.buffer, input.group.buffer, input.src.buffer, input.dst.buffer, input.bytes.buffer, input.sizes.buffer];
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
        if (i !== undefined) {
          a.x = pos[2 * i];
          a.y = pos[2 * i + 1];
        }
        return a;
      },
      { attributes: ["x", "y"] },
    );
    this.hulls = groupHulls(graph, this.groupOf);
    this.renderer.refreshPositions();
  }

  markReady() {
    // Ready once a frame with the final positions has been drawn.
    requestAnimationFrame(() =>
      requestAnimationFrame(() => {
        this.ready = true;
        this.updateStatus();
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
    this.renderer?.refresh();
    this.updateSearchResults();
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
    this.set({ sel: id }, {});
    this.refocus(reframe);
    this.renderDetails();
  }

  selectLink(edge) {
    this.linkSel = edge;
    this.state.sel = null;
    this.writeUrl(false);
    this.refocus(false);
    this.renderDetails();
  }

  // ---------------------------------------------------------------- controls

  bindControls() {
    document.querySelectorAll(".views button").forEach((b) => b.addEventListener("click", () => this.setView(b.dataset.view)));
    $("#mode").addEventListener("change", (e) => this.set({ mode: e.target.value }, { reload: true, push: true }));
    $("#day").addEventListener("change", (e) => this.setDay(e.target.value));
    $("#base").addEventListener("change", (e) => this.set({ base: e.target.value }, { reload: true, push: true }));
    $("#prev-day").addEventListener("click", () => this.stepDay(+1));
    $("#next-day").addEventListener("click", () => this.stepDay(-1));
    $("#apply-range").addEventListener("click", () => {
      const from = $("#from").value;
      const to = $("#to").value;
      if (!from || !to || from >= to) {
        this.showBanner("The range needs a start before its end.", "info");
        return;
      }
      this.set({ from, to }, { reload: true, push: true });
    });
    document.querySelectorAll('input[name="group"]').forEach((r) => r.addEventListener("change", () => this.set({ group: r.value }, { rebuild: true, relayout: true })));
    $("#level").addEventListener("change", (e) => this.set({ level: Number(e.target.value) }, { rebuild: true, relayout: true }));
    $("#split").addEventListener("change", (e) => this.set({ split: e.target.checked }, { rebuild: true, relayout: true }));
    $("#influence").addEventListener("change", (e) => this.set({ influence: Number(e.target.value) }, { rebuild: true, relayout: true }));
    $("#influence").addEventListener("input", (e) => ($("#influence-out").textContent = `${Number(e.target.value).toFixed(2)}×`));
    $("#color").addEventListener("change", (e) => this.set({ color: e.target.value }, { rebuild: true }));
    $("#edges").addEventListener("change", (e) => this.set({ edges: e.target.value }, { rebuild: true }));
    $("#changes").addEventListener("change", (e) => this.set({ changes: e.target.checked }, { rebuild: true, relayout: true }));
    $("#min-bytes").addEventListener("change", (e) => {
      const v = e.target.value.trim() === "" ? 0 : parseBytes(e.target.value);
      e.target.setAttribute("aria-invalid", v === null ? "true" : "false");
      if (v !== null) this.set({ minBytes: v }, { rebuild: true, relayout: true });
    });
    for (const [id, key] of [["#env-re", "envRe"], ["#arch-re", "archRe"]]) {
      $(id).addEventListener("change", (e) => {
        const { error } = compileRegex(e.target.value);
        e.target.setAttribute("aria-invalid", error ? "true" : "false");
        e.target.title = error ? `Invalid regular expression: ${error}` : "";
        if (!error) this.set({ [key]: e.target.value }, { rebuild: true, relayout: true });
      });
    }
    const search = $("#search");
    let timer = 0;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        this.activeResult = -1;
        this.linkSel = null;
        this.set({ q: search.value.trim(), sel: null }, { refocus: true });
        this.renderDetails();
      }, 120);
    });
    search.addEventListener("keydown", (e) => this.onSearchKey(e));
    search.addEventListener("blur", () => setTimeout(() => ($("#search-results").hidden = true), 150));
    search.addEventListener("focus", () => this.updateSearchResults());
    $("#zoom-in").addEventListener("click", () => this.camera?.zoom(1.5));
    $("#zoom-out").addEventListener("click", () => this.camera?.zoom(1 / 1.5));
    $("#zoom-reset").addEventListener("click", () => this.camera?.reset());
    $("#export-png").addEventListener("click", () => this.exportImage("png"));
    $("#export-svg").addEventListener("click", () => this.exportImage("svg"));
    $("#copy-link").addEventListener("click", () => this.copyLink());
    $("#help-button").addEventListener("click", () => this.toggleHelp(true));
    $("#help-close").addEventListener("click", () => this.toggleHelp(false));
    document.addEventListener("keydown", (e) => this.onKey(e));
    window.addEventListener("resize", () => this.renderer?.resize());
    window.addEventListener("popstate", () => {
      const prev = this.state;
      this.state = parseState(location.search);
      if (!this.state.day) this.state.day = prev.day;
      this.syncControls();
      this.load();
    });
  }

  /** Puts the state into the controls (after a URL load, popstate or a change elsewhere). */
  syncControls() {
    const s = this.state;
    document.body.classList.toggle("mode-diff", s.mode === "diff");
    document.body.classList.toggle("mode-range", s.mode === "range");
    document.body.classList.toggle("group-arch", s.group === "archdomain");
    document.querySelectorAll(".views button").forEach((b) => b.setAttribute("aria-checked", String(b.dataset.view === s.view)));
    $("#mode").value = s.mode;
    if (s.day) $("#day").value = s.day;
    if (s.base) $("#base").value = s.base;
    if (s.from) $("#from").value = s.from;
    if (s.to) $("#to").value = s.to;
    document.querySelectorAll('input[name="group"]').forEach((r) => (r.checked = r.value === s.group));
    document.querySelector(".arch-only").hidden = s.group !== "archdomain";
    $("#level").value = String(s.level);
    $("#split").checked = s.split;
    $("#influence").value = String(s.influence);
    $("#influence-out").textContent = `${s.influence.toFixed(2)}×`;
    $("#color").value = s.color;
    $("#edges").value = s.edges;
    $("#changes").checked = s.changes;
    const minEl = $("#min-bytes");
    if (document.activeElement !== minEl) minEl.value = s.minBytes ? fmtBytes(s.minBytes) : "";
    $("#env-re").value = s.envRe;
    $("#arch-re").value = s.archRe;
    const search = $("#search");
    if (document.activeElement !== search) search.value = s.q;
    if (this.data) {
      const q = this.data.query;
      $("#export-csv").href = exportUrl(q, "csv");
      $("#export-dot").href = exportUrl(q, "dot");
    }
  }

  setView(view) {
    if (view === this.state.view) return;
    this.linkSel = null;
    this.set({ view, sel: null }, { reload: true, push: true });
  }

  setDay(day) {
    const patch = { day };
    if (this.state.mode === "diff" && this.state.base === day) patch.base = this.days[this.days.indexOf(day) + 1] ?? this.state.base;
    this.set(patch, { reload: true, push: true });
  }

  /** +1 = one day older, -1 = one day newer (days are listed newest first). */
  stepDay(delta) {
    const i = this.days.indexOf(this.state.day) + delta;
    if (i >= 0 && i < this.days.length) this.setDay(this.days[i]);
  }

  fillFilterLists() {
    const { doc } = this.data;
    const s = this.state;
    const envs = envList(doc.nodes);
    const hiddenEnvs = new Set(s.hideEnv);
    $("#env-list").replaceChildren(
      ...envs.map(({ env, count }) =>
        h("li", {}, h("label", {},
          h("input", { type: "checkbox", "data-env": env, checked: !hiddenEnvs.has(env), onchange: (e) => this.toggleList("hideEnv", env, !e.target.checked) }),
          h("span", { class: "swatch", style: `background:${this.data.pal.env.get(env)}` }),
          h("span", { class: "name" }, env),
          h("span", { class: "count" }, count))),
      ),
    );
    if (envs.length === 0) $("#env-list").replaceChildren(h("li", { class: "count" }, "no envs in this map"));
    const hiddenArchs = new Set(s.hideArch);
    const tree = archTree(doc.nodes);
    $("#arch-list").replaceChildren(
      ...tree.map(({ prefix, count, depth }) =>
        h("li", { style: `padding-left:${depth * 14}px` }, h("label", { title: prefix },
          h("input", { type: "checkbox", "data-arch": prefix, checked: !hiddenArchs.has(prefix), onchange: (e) => this.toggleList("hideArch", prefix, !e.target.checked) }),
          h("span", { class: "name" }, prefix.split("/").pop()),
          h("span", { class: "count" }, count))),
      ),
    );
    // A prefix that is suppressed greys out everything under it.
    for (const li of $("#arch-list").children) {
      const p = li.querySelector("input").dataset.arch;
      const covered = s.hideArch.some((x) => p !== x && p.startsWith(`${x}/`));
      li.querySelector("input").disabled = covered;
      li.style.opacity = covered ? "0.5" : "";
    }
    const depth = maxArchDepth(doc.nodes);
    $("#level").replaceChildren(...Array.from({ length: depth }, (_, i) => h("option", { value: i + 1 }, `${i + 1} (${["top", "second", "third", "fourth"][i] ?? `${i + 1}th`})`)));
    if (s.level > depth) s.level = depth;
    $("#level").value = String(s.level);
  }

  toggleList(key, value, hide) {
    const set = new Set(this.state[key]);
    if (hide) set.add(value);
    else set.delete(value);
    this.set({ [key]: [...set].sort() }, { rebuild: true, relayout: true });
    this.fillFilterLists();
  }

  onSearchKey(e) {
    const list = $("#search-results");
    const n = Math.min(this.searchHits.length, 50);
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      if (!n) return;
      this.activeResult = (this.activeResult + (e.key === "ArrowDown" ? 1 : -1) + n) % n;
      this.updateSearchResults();
      list.children[this.activeResult]?.scrollIntoView({ block: "nearest" });
    } else if (e.key === "Enter") {
      e.preventDefault();
      if (this.activeResult >= 0 && this.searchHits[this.activeResult]) {
        this.select(this.searchHits[this.activeResult], true);
        list.hidden = true;
      } else if (n) {
        this.refocus(true);
        list.hidden = true;
      }
    } else if (e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      if (e.target.value) {
        e.target.value = "";
        this.set({ q: "", sel: null }, { refocus: true });
        this.renderDetails();
      } else {
        e.target.blur();
        $("#map").focus();
      }
    }
  }

  updateSearchResults() {
    const list = $("#search-results");
    const input = $("#search");
    if (!this.state.q || document.activeElement !== input) {
      list.hidden = true;
      return;
    }
    const { index } = this.data;
    const hits = this.searchHits.slice(0, 50);
    list.replaceChildren(
      ...(hits.length
        ? hits.map((id, i) => {
            const n = index.byId.get(id);
            const meta = [n.env, n.archdomain, n.addresses[0]].filter(Boolean).join(" · ");
            return h("li", { role: "option", id: `result-${i}`, "aria-selected": String(i === this.activeResult), onmousedown: (e) => { e.preventDefault(); this.select(id, true); list.hidden = true; } },
              h("span", {}, n.label), h("span", { class: "meta" }, meta || KIND_NAMES[n.kind]));
          })
        : [h("li", { class: "meta" }, "no match among the nodes shown")]),
    );
    if (this.searchHits.length > 50) list.append(h("li", { class: "meta" }, `… ${this.searchHits.length - 50} more (all highlighted on the map)`));
    input.setAttribute("aria-activedescendant", this.activeResult >= 0 ? `result-${this.activeResult}` : "");
    list.hidden = false;
  }

  onKey(e) {
    const t = e.target;
    const typing = t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement;
    if (e.key === "Escape") {
      if (!$("#help").hidden) return this.toggleHelp(false);
      if (typing) return;
      if (this.state.sel || this.linkSel) return this.select(null);
      if (this.state.q) {
        $("#search").value = "";
        this.set({ q: "" }, { refocus: true });
        this.renderDetails();
      }
      return;
    }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    const r = this.camera;
    const onMap = t === $("#map") || t === document.body;
    switch (e.key) {
      case "/":
        e.preventDefault();
        $("#search").focus();
        $("#search").select();
        break;
      case "+":
      case "=":
        r?.zoom(1.5);
        break;
      case "-":
      case "_":
        r?.zoom(1 / 1.5);
        break;
      case "0":
        r?.reset();
        break;
      case "f":
        if (this.focus.focus) this.focusNodes([...this.focus.focus]);
        break;
      case "[":
        this.stepDay(+1);
        break;
      case "]":
        this.stepDay(-1);
        break;
      case "1":
      case "2":
      case "3":
        this.setView(["instances", "clusters", "security-groups"][Number(e.key) - 1]);
        break;
      case "g": {
        const order = ["none", "env", "archdomain"];
        this.set({ group: order[(order.indexOf(this.state.group) + 1) % 3] }, { rebuild: true, relayout: true });
        break;
      }
      case "?":
        this.toggleHelp(true);
        break;
      case "ArrowLeft":
      case "ArrowRight":
      case "ArrowUp":
      case "ArrowDown": {
        if (!onMap) return;
        e.preventDefault();
        const step = 80;
        const d = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[e.key];
        r?.panBy(d[0], d[1], 120);
        break;
      }
      default:
    }
  }

  toggleHelp(show) {
    $("#help").hidden = !show;
    if (show) $("#help-close").focus();
    else $("#map").focus();
  }

  // ---------------------------------------------------------------- panels

  showNodeTooltip(id) {
    const n = this.data.index.byId.get(id);
    if (!n) return;
    const lines = [
      h("div", { class: "t" }, n.label),
      h("div", { class: "m" }, [KIND_NAMES[n.kind], n.env, n.archdomain].filter(Boolean).join(" · ")),
      h("div", {}, `in ${fmtBytes(n.bytes_in)} · out ${fmtBytes(n.bytes_out)}`),
    ];
    if (n.diff && n.diff !== "same") lines.push(h("div", {}, n.diff === "new" ? "new since the earlier day" : "gone since the earlier day"));
    this.showTooltipAt(this.scene.graph.getNodeAttributes(id), lines);
  }

  showEdgeTooltip(edge) {
    const l = this.data.index.links[Number(edge)];
    const [s, t] = this.scene.graph.extremities(edge);
    const a = this.scene.graph.getNodeAttributes(s);
    const b = this.scene.graph.getNodeAttributes(t);
    const lines = [
      h("div", { class: "t" }, `${this.data.index.byId.get(s).label} → ${this.data.index.byId.get(t).label}`),
      h("div", { class: "m" }, `port ${l.server_ports.join(", ") || "–"} · ${fmtCount(l.connections)} connections`),
      h("div", {}, `→ ${fmtBytes(l.bytes_to_target)} · ← ${fmtBytes(l.bytes_to_source)}`),
    ];
    if (l.diff) lines.push(h("div", {}, diffText(l)));
    this.showTooltipAt({ x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 }, lines);
  }

  showTooltipAt(graphPoint, children) {
    const tip = $("#tooltip");
    tip.replaceChildren(...children);
    const p = this.renderer.graphToViewport(graphPoint);
    tip.hidden = false;
    const { width } = this.renderer.getDimensions();
    const x = Math.min(p.x + 14, width - tip.offsetWidth - 8);
    tip.style.left = `${Math.max(8, x)}px`;
    tip.style.top = `${Math.max(8, p.y + 14)}px`;
  }

  hideTooltip() {
    $("#tooltip").hidden = true;
  }

  renderDetails() {
    const panel = $("#details");
    if (!this.data || !this.scene) {
      panel.hidden = true;
      return;
    }
    const id = this.state.sel;
    if (this.linkSel && this.scene.graph.hasEdge(this.linkSel)) return this.renderLinkDetails(panel, this.data.index.links[Number(this.linkSel)]);
    if (!id || !this.data.index.byId.has(id)) {
      panel.hidden = true;
      this.renderer?.resize();
      return;
    }
    const { index } = this.data;
    const n = index.byId.get(id);
    const row = (field, label, value) => (value === null || value === undefined || value === "" ? null : [h("dt", {}, label), h("dd", { "data-field": field }, value)]);
    const instance = n.instance_id ? [n.instance_id, n.instance_type, n.availability_zone, n.lifecycle].filter(Boolean).join(" · ") : null;
    // Optional fields of newer collectors (labels, region, agent health) show when present.
    const labels = n.labels && Object.keys(n.labels).length ? Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(", ") : null;
    const health = n.health ? `${fmtCount(n.health.reports)} reports${n.health.probe_drops ? ` · ${fmtCount(n.health.probe_drops)} probe drops (bytes may be low)` : ""}${n.health.spool_dropped ? ` · ${fmtCount(n.health.spool_dropped)} reports lost` : ""}` : null;
    const shown = this.scene.graph.hasNode(id);
    const peers = peersOf(index, id, shown ? this.filtered.links : null);
    const self = index.selfLinks.filter((l) => l.source === id);
    fill(panel, 
      h("header", {},
        h("div", { style: "flex:1" }, h("h2", {}, n.label), h("span", { class: "kind" }, KIND_NAMES[n.kind]),
          n.diff && n.diff !== "same" ? h("span", { class: "diff-tag", style: `background:${DIFF_COLORS[n.diff]};margin-left:6px` }, n.diff) : null),
        h("button", { type: "button", class: "icon", "aria-label": "Close details", onclick: () => this.select(null) }, "×")),
      shown ? null : h("p", { class: "filter-summary" }, "Hidden by the current filters."),
      h("dl", {},
        row("id", "Id", n.id),
        row("env", "Env", n.env),
        row("archdomain", "Archdomain", n.archdomain),
        row("addresses", "Addresses", n.addresses.join(", ")),
        row("instance", "Instance", instance),
        row("region", "Region", n.region && !(n.availability_zone ?? "").startsWith(n.region) ? n.region : null),
        row("labels", "Labels", labels),
        row("price", "Price", n.price_per_hour === null ? null : `${fmtUsd(n.price_per_hour)}/h`),
        row("members", "Members", n.members > 1 || n.kind === "cluster" || n.kind === "security_group" ? fmtCount(n.members) : null),
        row("security_groups", "Security groups", n.security_groups.join(", ")),
        row("processes", "Processes", n.processes.join(", ")),
        row("server_ports", "Server ports", n.server_ports.join(", ")),
        row("bytes_in", "Bytes in", fmtBytes(n.bytes_in)),
        row("bytes_out", "Bytes out", fmtBytes(n.bytes_out)),
        row("connections", "Connections", fmtCount(n.connections)),
        row("cost", "Transfer cost", fmtUsd(n.cost_usd)),
        row("health", "Agent", health),
        self.length ? row("internal", "Internal traffic", `${fmtBytes(self.reduce((a, l) => a + linkBytes(l), 0))} (${n.kind === "cluster" || n.kind === "security_group" ? "between its members" : "to itself"}, not drawn)`) : null,
      ),
      h("h3", {}, `Peers (${peers.length})`),
      peers.length
        ? h("table", { class: "peers" },
            h("thead", {}, h("tr", {}, h("th", {}, "Peer"), h("th", {}, "Role"), h("th", {}, "Port"), h("th", { class: "num" }, "Sent"), h("th", { class: "num" }, "Received"), h("th", { class: "num" }, "Cost"))),
            h("tbody", {}, ...peers.map((p) =>
              h("tr", { "data-peer": p.peer.id },
                h("td", {}, h("button", { type: "button", class: "peer", onclick: () => this.select(p.peer.id, true) }, p.peer.label),
                  p.link.diff && p.link.diff !== "same" ? h("span", { class: "diff-tag", style: `background:${DIFF_COLORS[p.link.diff]};margin-left:4px` }, p.link.diff) : null),
                h("td", {}, p.role),
                h("td", {}, p.ports.join(", ")),
                h("td", { class: "num" }, fmtBytes(p.sent)),
                h("td", { class: "num" }, fmtBytes(p.received)),
                h("td", { class: "num" }, fmtUsd(p.cost))))))
        : h("p", { class: "filter-summary" }, "No traffic with the nodes shown."),
    );
    const wasHidden = panel.hidden;
    panel.hidden = false;
    if (wasHidden) this.renderer?.resize();
  }

  renderLinkDetails(panel, l) {
    const { index } = this.data;
    const s = index.byId.get(l.source);
    const t = index.byId.get(l.target);
    const row = (field, label, value) => (value === null || value === undefined || value === "" ? null : [h("dt", {}, label), h("dd", { "data-field": field }, value)]);
    fill(panel, 
      h("header", {},
        h("div", { style: "flex:1" }, h("h2", {}, `${s.label} → ${t.label}`), h("span", { class: "kind" }, "link")),
        h("button", { type: "button", class: "icon", "aria-label": "Close details", onclick: () => this.select(null) }, "×")),
      h("dl", {},
        row("client", "Client", h("button", { type: "button", class: "peer", onclick: () => this.select(s.id, true) }, s.label)),
        row("server", "Server", h("button", { type: "button", class: "peer", onclick: () => this.select(t.id, true) }, t.label)),
        row("server_ports", "Server ports", l.server_ports.join(", ")),
        row("bytes_to_target", "Client → server", fmtBytes(l.bytes_to_target)),
        row("bytes_to_source", "Server → client", fmtBytes(l.bytes_to_source)),
        row("connections", "Connections", fmtCount(l.connections)),
        row("client_processes", "Client processes", l.client_processes.join(", ")),
        row("server_processes", "Server processes", l.server_processes.join(", ")),
        row("observed_by", "Observed by", { both: "both agents", client: "client's agent only", server: "server's agent only", mixed: "mixed (summed links)" }[l.observed_by] ?? l.observed_by),
        row("disagreement", "Disagreement", l.observed_by === "both" ? fmtBytes(l.disagreement_bytes) : null),
        row("cost", "Transfer cost", `${fmtUsd(l.cost_usd)} (${l.cost_kind.replace("_", "-")})`),
        row("seen", "Seen", fmtSeen(l.first_seen, l.last_seen)),
        l.diff ? row("diff", "Change", diffText(l)) : null,
      ),
    );
    const wasHidden = panel.hidden;
    panel.hidden = false;
    if (wasHidden) this.renderer?.resize();
  }

  updateLegend() {
    const s = this.state;
    const { pal } = this.data;
    const dot = (fill, stroke = fill, r = 5, sw = 1.2) => {
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("width", String(2 * r + 4));
      svg.setAttribute("height", String(2 * r + 4));
      svg.innerHTML = `<circle cx="${r + 2}" cy="${r + 2}" r="${r}" fill="${fill}" stroke="${stroke}" stroke-width="${sw}"/>`;
      return svg;
    };
    const line = (color, w, arrow) => {
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("width", "44");
      svg.setAttribute("height", "14");
      svg.innerHTML = `<line x1="2" y1="7" x2="${arrow ? 34 : 42}" y2="7" stroke="${color}" stroke-width="${w}"/>${arrow ? `<path d="M42 7 L33 ${7 - Math.max(w * 1.5, 2.5)} L33 ${7 + Math.max(w * 1.5, 2.5)} Z" fill="${color}"/>` : ""}`;
      return svg;
    };
    const item = (icon, text) => h("div", { class: "item" }, icon, h("span", {}, text));
    const parts = [];
    if (s.color === "env") {
      parts.push(h("h3", {}, "Node colour: env"));
      for (const [env, c] of pal.env) parts.push(item(dot(c), env));
      parts.push(item(dot(UNKNOWN), "no env"));
    } else if (s.color === "archdomain") {
      parts.push(h("h3", {}, "Node colour: archdomain"));
      for (const [a, c] of pal.arch) parts.push(item(dot(c), a));
      parts.push(item(dot(UNKNOWN), "no archdomain"));
    } else {
      parts.push(h("h3", {}, "Node colour: kind"));
      for (const [k, c] of Object.entries(KIND_COLORS)) parts.push(item(dot(c), KIND_NAMES[k]));
    }
    parts.push(item(dot(EXTERNAL), "external address"));
    parts.push(item(dot(tint("#4e79a7", 0.7), "#4e79a7", 5, 2.5), "ring: unmonitored (no agent)"));
    const sc = this.scene.scales;
    parts.push(h("h3", {}, "Size and width (log scale)"));
    if (Number.isFinite(sc.node[0])) {
      parts.push(item(dot("#c9ced6", "#9aa3af", Math.max(1.5, sc.nodeSize(sc.node[0]))), `node: ${fmtBytes(sc.node[0])} in+out`));
      parts.push(item(dot("#c9ced6", "#9aa3af", Math.max(3, sc.nodeSize(sc.node[1]))), `node: ${fmtBytes(sc.node[1])}`));
    }
    if (Number.isFinite(sc.edge[0])) {
      parts.push(item(line(EDGE_NEUTRAL, Math.max(1, sc.edgeSize(sc.edge[0])), true), `link: ${fmtBytes(sc.edge[0])}`));
      parts.push(item(line(EDGE_NEUTRAL, Math.min(EDGE_MAX / 1.5, Math.max(2.5, sc.edgeSize(sc.edge[1]))), true), `link: ${fmtBytes(sc.edge[1])}`));
    }
    parts.push(item(line("#374151", 1.5, true), "arrow: client → server"));
    if (s.mode === "diff") {
      parts.push(h("h3", {}, `Diff: ${s.base} → ${s.day}`));
      for (const [k, c] of Object.entries(DIFF_COLORS)) parts.push(item(line(c, 3, false), { new: "new", gone: "gone", changed: "changed ≥ 2× either way", same: "unchanged" }[k]));
    } else if (s.edges === "cost") {
      parts.push(h("h3", {}, "Link colour: transfer cost"));
      for (const [k, c] of Object.entries(COST_COLORS)) parts.push(item(line(c, 3, false), k.replace("_", "-")));
    } else if (s.edges === "crossenv") {
      parts.push(h("h3", {}, "Link colour"));
      parts.push(item(line(EDGE_CROSS_ENV, 3, false), "between two envs"));
      parts.push(item(line(EDGE_NEUTRAL, 3, false), "within one env"));
    }
    if (s.group !== "none") parts.push(h("h3", {}, "Dashed outline: a group"));
    $("#legend").replaceChildren(...parts);
  }

  updateFilterSummary() {
    const f = this.filtered;
    const bits = [];
    if (f.suppressed) bits.push(`${fmtCount(f.suppressed)} node(s) suppressed`);
    if (f.belowMin) bits.push(`${fmtCount(f.belowMin)} link(s) under ${fmtBytes(this.state.minBytes)}`);
    $("#filter-summary").textContent = bits.join(" · ");
  }

  updateStatus() {
    const st = $("#status");
    if (!this.data || !this.scene) {
      st.replaceChildren();
      return;
    }
    const doc = this.data.doc;
    const g = this.scene.graph;
    const s = this.state;
    const when = s.mode === "range" ? `${s.from} – ${s.to} UTC` : s.mode === "diff" ? `${s.base} → ${s.day}` : s.day;
    const items = [
      h("span", {}, h("b", {}, VIEW_NAMES[s.view]), ` · ${when}`),
      h("span", { id: "count-nodes" }, h("b", {}, fmtCount(g.order)), ` of ${fmtCount(doc.nodes.length)} nodes`),
      h("span", { id: "count-links" }, h("b", {}, fmtCount(g.size)), ` of ${fmtCount(doc.links.length)} links`),
      h("span", {}, `${fmtBytes(doc.totals.bytes)} · ${fmtUsd(doc.totals.cost_usd)} transfer`),
    ];
    if (doc.diff) {
      const c = doc.diff.counts;
      items.push(h("span", { id: "diff-counts" }, `links: ${c.new} new · ${c.gone} gone · ${c.changed} changed`));
    }
    const lay = this.layout;
    items.push(h("span", {}, lay.state === "running" ? "layout running…" : lay.state === "settled" ? `layout settled in ${(lay.millis / 1000).toFixed(1)} s (${lay.iterations}${lay.budgetSpent ? ` of ${lay.maxIterations} iterations: time budget reached` : " iterations"})` : ""));
    items.push(h("span", { style: "margin-left:auto", id: "renderer-kind" }, this.renderer?.kind === "webgl" ? "WebGL" : this.rendererWhy ?? "Canvas 2D"));
    st.replaceChildren(...items);
  }

  showProgress(done, total) {
    const p = $("#progress");
    p.hidden = false;
    p.querySelector(".bar span").style.width = `${Math.round((100 * done) / Math.max(total, 1))}%`;
    p.querySelector(".text").textContent = `Laying out ${fmtCount(this.scene.graph.order)} nodes… ${done}/${total || "?"}`;
  }

  hideProgress() {
    $("#progress").hidden = true;
  }

  showBanner(text, kind = "error") {
    const b = $("#banner");
    b.title = "Click to dismiss";
    b.onclick = () => this.hideBanner();
    b.textContent = text;
    b.className = `banner ${kind === "info" ? "info" : ""}`;
    b.hidden = false;
  }

  hideBanner() {
    $("#banner").hidden = true;
  }

  // ---------------------------------------------------------------- export

  fileStem() {
    const s = this.state;
    const when = s.mode === "range" ? `${s.from}_${s.to}`.replaceAll(":", "") : s.mode === "diff" ? `${s.base}_vs_${s.day}` : s.day;
    return `trafficmap-${s.view}-${when}`;
  }

  /** Paints the current view (as on screen) into a target: groups, links, nodes, labels, title. */
  paintExport(target, width, height) {
    const r = this.renderer;
    const groups = (phase) => this.hulls.length && drawGroups(target, this.hulls, (p) => r.graphToViewport(p), (x) => r.scaleSize(x), this.data.pal, { outlines: phase === "under", names: phase === "over" });
    groups("under");
    const drawn = paintGraph(target, this.scene.graph, {
      toViewport: (p) => r.graphToViewport(p),
      scaleSize: (x) => r.scaleSize(x),
      width,
      height,
      nodeReducer: this.reducers.nodeReducer,
      edgeReducer: this.reducers.edgeReducer,
    });
    groups("over");
    const s = this.state;
    const title = `trafficmap · ${VIEW_NAMES[s.view]} · ${s.mode === "diff" ? `${s.base} → ${s.day}` : s.mode === "range" ? `${s.from} – ${s.to} UTC` : s.day}`;
    target.text(12, 16, title, { size: 14, weight: "650", halo: "#ffffffe0" });
    return drawn;
  }

  async exportImage(format) {
    if (!this.renderer || !this.scene) return;
    const { width, height } = this.renderer.getDimensions();
    let blob;
    if (format === "png") {
      const scale = 2;
      const canvas = document.createElement("canvas");
      canvas.width = width * scale;
      canvas.height = height * scale;
      const ctx = canvas.getContext("2d");
      ctx.scale(scale, scale);
      ctx.fillStyle = BACKGROUND;
      ctx.fillRect(0, 0, width, height);
      this.lastExport = this.paintExport(new CanvasTarget(ctx), width, height);
      blob = await new Promise((res) => canvas.toBlob(res, "image/png"));
    } else {
      const target = new SvgTarget(width, height, BACKGROUND);
      this.lastExport = this.paintExport(target, width, height);
      blob = new Blob([target.toString()], { type: "image/svg+xml" });
    }
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: `${this.fileStem()}.${format}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  async copyLink() {
    const btn = $("#copy-link");
    try {
      await navigator.clipboard.writeText(location.href);
      btn.textContent = "Copied";
    } catch {
      // No clipboard access (plain http, or denied): show the link to copy by hand.
      window.prompt("Copy this link:", location.href);
    }
    setTimeout(() => (btn.textContent = "Copy link"), 1500);
  }

  // ---------------------------------------------------------------- test hooks

  exposeHooks() {
    const app = this;
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
          groups: app.hulls.map((g) => g.key).sort(),
          highlighted: app.focus.focus ? app.focus.focus.size : 0,
          marked: app.focus.marked ? [...app.focus.marked].sort() : [],
          searchHits: app.searchHits.slice().sort(),
          suppressed: app.filtered.suppressed,
          diff: app.data.doc.diff?.counts ?? null,
          canvasDrawn: r.kind === "canvas" ? { ...r.lastDrawn } : null,
          lastExport: app.lastExport ?? null,
        };
      },
      /** Where a node is drawn (CSS pixels inside #map) and its colour after highlighting. */
      node(id) {
        if (!app.scene?.graph.hasNode(id)) return null;
        const a = app.scene.graph.getNodeAttributes(id);
        const d = app.reducers.nodeReducer(id, a);
        const p = app.renderer.graphToViewport(a);
        return { x: p.x, y: p.y, r: app.renderer.scaleSize(d.size), color: d.color, borderColor: d.borderColor, label: d.label };
      },
      nodeIds: () => (app.scene ? app.scene.graph.nodes() : []),
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
      get nodeSizeShrink() {
        return app.scene?.scales.shrink ?? 1;
      },
    };
  }
}

function diffText(l) {
  if (l.diff === "new") return `new: ${fmtBytes(linkBytes(l))}`;
  if (l.diff === "gone") return `gone (was ${fmtBytes(l.before_bytes)})`;
  return `${l.diff === "changed" ? "changed" : "unchanged"}: ${fmtBytes(l.before_bytes)} → ${fmtBytes(linkBytes(l))}`;
}

const app = new App();
app.start().catch((e) => {
  // Unexpected: show it, and let the console have it too (the tests treat it as a failure).
  app.showBanner(`The viewer failed: ${e.message}`);
  throw e;
});
