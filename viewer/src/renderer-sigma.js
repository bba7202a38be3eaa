// WebGL renderer: sigma.js 3 over the graphology graph, with arrowed edges and bordered nodes.
// The group hulls and labels are drawn by the app on a 2D canvas layer under the edges.

import { createNodeBorderProgram } from "@sigma/node-border";
import Sigma from "sigma";
import { createEdgeArrowProgram } from "sigma/rendering";
import { BACKGROUND } from "./colors.js";

const NodeProgram = createNodeBorderProgram({
  borders: [
    { size: { attribute: "borderSize", defaultValue: 0.12 }, color: { attribute: "borderColor" } },
    { size: { fill: true }, color: { attribute: "color" } },
  ],
});

// Bigger heads than sigma's defaults: direction must read on thin edges too.
const ArrowProgram = createEdgeArrowProgram({ lengthToThicknessRatio: 4, widenessToThicknessRatio: 3 });

/** Whether this browser gives us a WebGL context (headless Chromium without GPU uses SwiftShader). */
export function webglAvailable() {
  try {
    const c = document.createElement("canvas");
    return !!(c.getContext("webgl2") || c.getContext("webgl"));
  } catch {
    return false;
  }
}

export class SigmaRenderer {
  constructor(container, graph, { nodeReducer, edgeReducer, drawOverlay }) {
    this.kind = "webgl";
    this.sigma = new Sigma(graph, container, {
      nodeProgramClasses: { border: NodeProgram },
      edgeProgramClasses: { arrow: ArrowProgram },
      defaultNodeType: "border",
      defaultEdgeType: "arrow",
      nodeReducer,
      edgeReducer,
      zIndex: true,
      enableEdgeEvents: true,
      renderEdgeLabels: false,
      labelFont: "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif",
      labelSize: 12,
      labelWeight: "500",
      labelColor: { color: "#1f2937" },
      labelRenderedSizeThreshold: 9,
      labelDensity: 0.6,
      minCameraRatio: 0.02,
      maxCameraRatio: 8,
      stagePadding: 40,
    });
    this.overlay = this.sigma.createCanvas("groups", { beforeLayer: "edges" });
    this.overlayCtx = this.overlay.getContext("2d");
    this.drawOverlay = drawOverlay;
    this.frames = 0;
    this.sigma.on("afterRender", () => {
      this.frames++;
      this.paintOverlay();
    });
    container.style.background = BACKGROUND;
  }

  paintOverlay() {
    const { width, height } = this.sigma.getDimensions();
    const dpr = window.devicePixelRatio || 1;
    const c = this.overlay;
    if (c.width !== Math.round(width * dpr) || c.height !== Math.round(height * dpr)) {
      c.width = Math.round(width * dpr);
      c.height = Math.round(height * dpr);
      c.style.width = `${width}px`;
      c.style.height = `${height}px`;
    }
    const ctx = this.overlayCtx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    this.drawOverlay?.(ctx, this);
  }

  on(event, fn) {
    // sigma's payloads carry `node` / `edge` and `event`; pass them on as is.
    this.sigma.on(event, fn);
  }

  refresh() {
    this.sigma.refresh();
  }

  /** Positions changed (layout progress): re-index without re-processing settings. */
  refreshPositions() {
    this.sigma.refresh({ skipIndexation: false });
  }

  graphToViewport(p) {
    return this.sigma.graphToViewport(p);
  }

  viewportToGraph(p) {
    return this.sigma.viewportToGraph(p);
  }

  scaleSize(size) {
    return this.sigma.scaleSize(size);
  }

  getDimensions() {
    return this.sigma.getDimensions();
  }

  /** Pixel size of a node as drawn, after reducers. */
  nodeDisplay(node) {
    return this.sigma.getNodeDisplayData(node);
  }

  zoom(factor, duration = 200) {
    const cam = this.sigma.getCamera();
    return cam.animate({ ratio: cam.getState().ratio / factor }, { duration });
  }

  reset(duration = 300) {
    return this.sigma.getCamera().animatedReset({ duration });
  }

  /** Pans by a number of pixels. */
  panBy(dx, dy, duration = 0) {
    const cam = this.sigma.getCamera();
    const { width, height } = this.sigma.getDimensions();
    const a = this.sigma.viewportToFramedGraph({ x: width / 2, y: height / 2 });
    const b = this.sigma.viewportToFramedGraph({ x: width / 2 + dx, y: height / 2 + dy });
    const s = cam.getState();
    const next = { x: s.x + (b.x - a.x), y: s.y + (b.y - a.y) };
    if (duration) return cam.animate(next, { duration });
    cam.setState(next);
    return Promise.resolve();
  }

  /** Frames the given nodes (the search result or a selection with its neighbours). */
  focusNodes(nodes, duration = 400) {
    if (!nodes.length) return Promise.resolve();
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (const n of nodes) {
      const d = this.sigma.getNodeDisplayData(n);
      if (!d) continue;
      minX = Math.min(minX, d.x);
      maxX = Math.max(maxX, d.x);
      minY = Math.min(minY, d.y);
      maxY = Math.max(maxY, d.y);
    }
    if (!Number.isFinite(minX)) return Promise.resolve();
    const ratio = Math.min(1, Math.max(0.08, Math.max(maxX - minX, maxY - minY) * 1.4));
    return this.sigma.getCamera().animate({ x: (minX + maxX) / 2, y: (minY + maxY) / 2, ratio }, { duration });
  }

  cameraRatio() {
    return this.sigma.getCamera().getState().ratio;
  }

  resize() {
    this.sigma.resize();
    this.sigma.refresh();
  }

  kill() {
    this.sigma.kill();
  }
}
