// Canvas 2D renderer for browsers without WebGL. Same interface and camera model as the sigma
// wrapper (camera x/y in the unit square framing the graph, ratio 1 = whole graph; node and edge
// sizes in pixels at ratio 1, scaled by 1/sqrt(ratio) like sigma), painted by paint.js.

import { BACKGROUND } from "./colors.js";
import { CanvasTarget, paintGraph } from "./paint.js";

const PADDING = 64; // as sigma's stagePadding: room for group outlines and names

export class CanvasRenderer {
  constructor(container, graph, { nodeReducer, edgeReducer, drawOverlay }) {
    this.kind = "canvas";
    this.container = container;
    this.graph = graph;
    this.nodeReducer = nodeReducer;
    this.edgeReducer = edgeReducer;
    this.drawOverlay = drawOverlay;
    this.camera = { x: 0.5, y: 0.5, ratio: 1 };
    this.listeners = new Map();
    this.frames = 0;
    this.hovered = null;
    this.lastDrawn = { nodes: 0, edges: 0, labels: 0 };
    this.canvas = document.createElement("canvas");
    this.canvas.className = "canvas-renderer";
    Object.assign(this.canvas.style, { position: "absolute", inset: "0", width: "100%", height: "100%", background: BACKGROUND });
    container.appendChild(this.canvas);
    this.ctx = this.canvas.getContext("2d");
    this.frame();
    this.bindEvents();
    this.scheduleRender();
  }

  /** Recomputes the framing of the graph (its bounding box), as sigma does on every refresh. */
  frame() {
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    this.graph.forEachNode((_, a) => {
      minX = Math.min(minX, a.x);
      maxX = Math.max(maxX, a.x);
      minY = Math.min(minY, a.y);
      maxY = Math.max(maxY, a.y);
    });
    if (!Number.isFinite(minX)) [minX, maxX, minY, maxY] = [0, 1, 0, 1];
    this.bbox = { cx: (minX + maxX) / 2, cy: (minY + maxY) / 2, size: Math.max(maxX - minX, maxY - minY, 1e-9) };
  }

  /** Container size, read once per frame: reading clientWidth per node forces style work. */
  getDimensions() {
    if (!this.dims) {
      this.dims = { width: this.container.clientWidth, height: this.container.clientHeight };
      requestAnimationFrame(() => (this.dims = null));
    }
    return this.dims;
  }

  fitPx() {
    const { width, height } = this.getDimensions();
    return Math.max(Math.min(width, height) - 2 * PADDING, 10);
  }

  /** Framed coordinates: the unit square around the graph's bounding box, as sigma's. */
  toFramed(p) {
    return { x: 0.5 + (p.x - this.bbox.cx) / this.bbox.size, y: 0.5 + (p.y - this.bbox.cy) / this.bbox.size };
  }

  framedToViewport(n, state = this.camera) {
    const { width, height } = this.getDimensions();
    const k = this.fitPx() / state.ratio;
    return { x: (n.x - state.x) * k + width / 2, y: -(n.y - state.y) * k + height / 2 };
  }

  viewportToFramed(v, state = this.camera) {
    const { width, height } = this.getDimensions();
    const k = this.fitPx() / state.ratio;
    return { x: state.x + (v.x - width / 2) / k, y: state.y - (v.y - height / 2) / k };
  }

  graphToViewport(p) {
    return this.framedToViewport(this.toFramed(p));
  }

  viewportToGraph(p) {
    const n = this.viewportToFramed(p);
    return { x: (n.x - 0.5) * this.bbox.size + this.bbox.cx, y: (n.y - 0.5) * this.bbox.size + this.bbox.cy };
  }

  getCamera() {
    return { ...this.camera };
  }

  scaleSize(size) {
    return size / Math.sqrt(this.camera.ratio);
  }

  cameraRatio() {
    return this.camera.ratio;
  }

  setCamera(state) {
    Object.assign(this.camera, state);
    this.scheduleRender();
  }

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, []);
    this.listeners.get(event).push(fn);
  }

  once(event, fn) {
    const wrapped = (payload) => {
      this.listeners.set(event, (this.listeners.get(event) ?? []).filter((f) => f !== wrapped));
      fn(payload);
    };
    this.on(event, wrapped);
  }

  emit(event, payload) {
    for (const fn of (this.listeners.get(event) ?? []).slice()) fn(payload);
  }

  scheduleRender() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      this.render();
    });
  }

  render() {
    const { width, height } = this.getDimensions();
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(width * dpr) || this.canvas.height !== Math.round(height * dpr)) {
      this.canvas.width = Math.round(width * dpr);
      this.canvas.height = Math.round(height * dpr);
    }
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, width, height);
    this.drawOverlay?.(ctx, this, "under");
    this.lastDrawn = paintGraph(new CanvasTarget(ctx), this.graph, {
      toViewport: (p) => this.graphToViewport(p),
      scaleSize: (s) => this.scaleSize(s),
      width,
      height,
      nodeReducer: this.nodeReducer,
      edgeReducer: this.edgeReducer,
      // Labels are placed by the app over everything (labels.js, issue 14 item 4).
      labels: false,
    });
    this.drawOverlay?.(ctx, this, "over");
    this.frames++;
    this.emit("afterRender", {});
  }

  refresh() {
    if (!this.frozen) this.frame();
    this.scheduleRender();
  }

  /** While on (a node is dragged), the framing of the graph stays as it is. */
  freezeFraming(on) {
    this.frozen = on;
    if (!on) this.frame();
  }

  refreshPositions() {
    this.refresh();
  }

  nodeDisplay(node) {
    if (!this.graph.hasNode(node)) return undefined;
    const a = this.graph.getNodeAttributes(node);
    const d = this.nodeReducer ? this.nodeReducer(node, a) : a;
    return { ...d, ...this.toFramed(a) };
  }

  /** The topmost node under a viewport point, if any. */
  nodeAt(x, y) {
    let best = null;
    let bestZ = -Infinity;
    this.graph.forEachNode((key, attrs) => {
      const d = this.nodeReducer ? this.nodeReducer(key, attrs) : attrs;
      if (d.hidden) return;
      const p = this.graphToViewport(attrs);
      const r = Math.max(this.scaleSize(d.size), 4);
      const z = d.zIndex ?? 0;
      if ((p.x - x) ** 2 + (p.y - y) ** 2 <= r * r && z >= bestZ) {
        best = key;
        bestZ = z;
      }
    });
    return best;
  }

  /** The link passing within a few pixels of a viewport point, if any (the nearest). */
  edgeAt(x, y) {
    let best = null;
    let bestD = 4;
    const pos = new Map();
    const at = (key) => {
      let p = pos.get(key);
      if (!p) pos.set(key, (p = this.graphToViewport(this.graph.getNodeAttributes(key))));
      return p;
    };
    this.graph.forEachEdge((key, attrs, s, t) => {
      const d = this.edgeReducer ? this.edgeReducer(key, attrs) : attrs;
      if (d.hidden) return;
      const a = at(s);
      const b = at(t);
      const dx = b.x - a.x;
      const dy = b.y - a.y;
      const len2 = dx * dx + dy * dy;
      if (len2 === 0) return;
      const u = Math.max(0, Math.min(1, ((x - a.x) * dx + (y - a.y) * dy) / len2));
      const dist = Math.hypot(a.x + u * dx - x, a.y + u * dy - y) - this.scaleSize(d.size) / 2;
      if (dist < bestD) {
        bestD = dist;
        best = key;
      }
    });
    return best;
  }

  bindEvents() {
    const c = this.canvas;
    const local = (e) => {
      const r = c.getBoundingClientRect();
      return { x: e.clientX - r.left, y: e.clientY - r.top };
    };
    // Panning and zooming are camera.js's; here only hover and click, on nodes and links.
    c.addEventListener("click", (e) => {
      const p = local(e);
      const node = this.nodeAt(p.x, p.y);
      const edge = node ? null : this.edgeAt(p.x, p.y);
      if (node) this.emit("clickNode", { node, event: e });
      else if (edge) this.emit("clickEdge", { edge, event: e });
      else this.emit("clickStage", { event: e });
    });
    c.addEventListener("mousemove", (e) => {
      if (e.buttons) return;
      const p = local(e);
      const node = this.nodeAt(p.x, p.y);
      if (node !== this.hovered) {
        if (this.hovered) this.emit("leaveNode", { node: this.hovered });
        this.hovered = node;
        if (node) this.emit("enterNode", { node, event: e });
      }
      const edge = node ? null : this.edgeAt(p.x, p.y);
      if (edge !== this.hoveredEdge) {
        if (this.hoveredEdge) this.emit("leaveEdge", { edge: this.hoveredEdge });
        this.hoveredEdge = edge;
        if (edge) this.emit("enterEdge", { edge, event: e });
      }
      c.style.cursor = node || edge ? "pointer" : "default";
    });
    c.addEventListener("mouseleave", () => {
      if (this.hovered) this.emit("leaveNode", { node: this.hovered });
      this.hovered = null;
    });
  }

  resize() {
    this.dims = null;
    this.scheduleRender();
  }

  kill() {
    cancelAnimationFrame(this.pending);
    this.canvas.remove();
    this.listeners.clear();
  }
}
