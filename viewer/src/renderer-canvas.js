// Canvas 2D renderer for browsers without WebGL. Same interface and camera model as the sigma
// wrapper (camera x/y in the unit square framing the graph, ratio 1 = whole graph; node and edge
// sizes in pixels at ratio 1, scaled by 1/sqrt(ratio) like sigma), painted by paint.js.

import { BACKGROUND } from "./colors.js";
import { CanvasTarget, paintGraph } from "./paint.js";

const PADDING = 40;
const CLICK_TOLERANCE = 4;

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

  getDimensions() {
    return { width: this.container.clientWidth, height: this.container.clientHeight };
  }

  fitPx() {
    const { width, height } = this.getDimensions();
    return Math.max(Math.min(width, height) - 2 * PADDING, 10);
  }

  graphToViewport(p) {
    const { width, height } = this.getDimensions();
    const k = this.fitPx() / this.camera.ratio;
    const nx = 0.5 + (p.x - this.bbox.cx) / this.bbox.size;
    const ny = 0.5 + (p.y - this.bbox.cy) / this.bbox.size;
    return { x: (nx - this.camera.x) * k + width / 2, y: -(ny - this.camera.y) * k + height / 2 };
  }

  viewportToGraph(p) {
    const n = this.viewportToFramed(p);
    return { x: (n.x - 0.5) * this.bbox.size + this.bbox.cx, y: (n.y - 0.5) * this.bbox.size + this.bbox.cy };
  }

  viewportToFramed(p) {
    const { width, height } = this.getDimensions();
    const k = this.fitPx() / this.camera.ratio;
    return { x: this.camera.x + (p.x - width / 2) / k, y: this.camera.y - (p.y - height / 2) / k };
  }

  scaleSize(size) {
    return size / Math.sqrt(this.camera.ratio);
  }

  cameraRatio() {
    return this.camera.ratio;
  }

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, []);
    this.listeners.get(event).push(fn);
  }

  emit(event, payload) {
    for (const fn of this.listeners.get(event) ?? []) fn(payload);
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
    this.drawOverlay?.(ctx, this);
    this.lastDrawn = paintGraph(new CanvasTarget(ctx), this.graph, {
      toViewport: (p) => this.graphToViewport(p),
      scaleSize: (s) => this.scaleSize(s),
      width,
      height,
      nodeReducer: this.nodeReducer,
      edgeReducer: this.edgeReducer,
      // Like sigma's hideEdgesOnMove: 50k canvas strokes per frame would make dragging crawl.
      skipEdges: this.dragging?.moved && this.graph.size > 20000,
    });
    this.frames++;
    this.emit("afterRender", {});
  }

  refresh() {
    this.frame();
    this.scheduleRender();
  }

  refreshPositions() {
    this.refresh();
  }

  nodeDisplay(node) {
    if (!this.graph.hasNode(node)) return undefined;
    const a = this.graph.getNodeAttributes(node);
    const d = this.nodeReducer ? this.nodeReducer(node, a) : a;
    return { ...d, x: 0.5 + (a.x - this.bbox.cx) / this.bbox.size, y: 0.5 + (a.y - this.bbox.cy) / this.bbox.size };
  }

  animate(target, duration) {
    const from = { ...this.camera };
    const start = performance.now();
    cancelAnimationFrame(this.anim);
    return new Promise((resolve) => {
      const step = () => {
        const t = duration > 0 ? Math.min(1, (performance.now() - start) / duration) : 1;
        const e = t < 0.5 ? 2 * t * t : 1 - (-2 * t + 2) ** 2 / 2;
        for (const k of Object.keys(target)) this.camera[k] = from[k] + (target[k] - from[k]) * e;
        this.scheduleRender();
        if (t < 1) this.anim = requestAnimationFrame(step);
        else resolve();
      };
      step();
    });
  }

  clampRatio(r) {
    return Math.min(8, Math.max(0.02, r));
  }

  zoom(factor, duration = 200) {
    return this.animate({ ratio: this.clampRatio(this.camera.ratio / factor) }, duration);
  }

  reset(duration = 300) {
    return this.animate({ x: 0.5, y: 0.5, ratio: 1 }, duration);
  }

  panBy(dx, dy, duration = 0) {
    const k = this.fitPx() / this.camera.ratio;
    return this.animate({ x: this.camera.x + dx / k, y: this.camera.y - dy / k }, duration);
  }

  focusNodes(nodes, duration = 400) {
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (const n of nodes) {
      const d = this.nodeDisplay(n);
      if (!d) continue;
      minX = Math.min(minX, d.x);
      maxX = Math.max(maxX, d.x);
      minY = Math.min(minY, d.y);
      maxY = Math.max(maxY, d.y);
    }
    if (!Number.isFinite(minX)) return Promise.resolve();
    const ratio = Math.min(1, Math.max(0.08, Math.max(maxX - minX, maxY - minY) * 1.4));
    return this.animate({ x: (minX + maxX) / 2, y: (minY + maxY) / 2, ratio }, duration);
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

  bindEvents() {
    const c = this.canvas;
    const local = (e) => {
      const r = c.getBoundingClientRect();
      return { x: e.clientX - r.left, y: e.clientY - r.top };
    };
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const p = local(e);
      const before = this.viewportToFramed(p);
      this.camera.ratio = this.clampRatio(this.camera.ratio * (e.deltaY > 0 ? 1.25 : 0.8));
      const after = this.viewportToFramed(p);
      this.camera.x += before.x - after.x;
      this.camera.y += before.y - after.y;
      this.scheduleRender();
    }, { passive: false });
    c.addEventListener("mousedown", (e) => {
      this.dragging = { start: local(e), last: local(e), moved: false };
    });
    this.onMouseUp = (e) => {
      const d = this.dragging;
      this.dragging = null;
      if (!d) return;
      if (d.moved) {
        this.scheduleRender();
        return;
      }
      const p = local(e);
      const node = this.nodeAt(p.x, p.y);
      if (node) this.emit("clickNode", { node, event: e });
      else this.emit("clickStage", { event: e });
    };
    // On window: a drag that ends outside the canvas must still end.
    window.addEventListener("mouseup", this.onMouseUp);
    c.addEventListener("mousemove", (e) => {
      const p = local(e);
      const d = this.dragging;
      if (d) {
        if (Math.hypot(p.x - d.start.x, p.y - d.start.y) > CLICK_TOLERANCE) d.moved = true;
        if (d.moved) {
          const k = this.fitPx() / this.camera.ratio;
          this.camera.x -= (p.x - d.last.x) / k;
          this.camera.y += (p.y - d.last.y) / k;
          d.last = p;
          this.scheduleRender();
        }
        return;
      }
      const node = this.nodeAt(p.x, p.y);
      if (node !== this.hovered) {
        if (this.hovered) this.emit("leaveNode", { node: this.hovered });
        this.hovered = node;
        if (node) this.emit("enterNode", { node, event: e });
        c.style.cursor = node ? "pointer" : "default";
      }
    });
    c.addEventListener("mouseleave", () => {
      if (this.hovered) this.emit("leaveNode", { node: this.hovered });
      this.hovered = null;
    });
  }

  resize() {
    this.scheduleRender();
  }

  kill() {
    cancelAnimationFrame(this.pending);
    cancelAnimationFrame(this.anim);
    window.removeEventListener("mouseup", this.onMouseUp);
    this.canvas.remove();
    this.listeners.clear();
  }
}
