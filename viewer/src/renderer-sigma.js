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

/**
 * Whether this browser gives us WebGL, and whether it is a software implementation (Chromium
 * without a GPU falls back to SwiftShader; Mesa without one to llvmpipe).
 */
export function webglAvailable() {
  try {
    const c = document.createElement("canvas");
    const gl = c.getContext("webgl2") || c.getContext("webgl");
    if (!gl) return { available: false, software: false };
    const info = gl.getExtension("WEBGL_debug_renderer_info");
    const name = info ? String(gl.getParameter(info.UNMASKED_RENDERER_WEBGL)) : "";
    gl.getExtension("WEBGL_lose_context")?.loseContext();
    return { available: true, software: /swiftshader|llvmpipe|softpipe|software/i.test(name), name };
  } catch {
    return { available: false, software: false };
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
      // Node labels are placed by the app on the top layer (labels.js, issue 14 item 4), where
      // they also avoid the group names; sigma's own grid would not know about those.
      renderLabels: false,
      labelFont: "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif",
      labelSize: 12,
      labelWeight: "500",
      labelColor: { color: "#1f2937" },
      labelRenderedSizeThreshold: 9,
      labelDensity: 0.6,
      minCameraRatio: 0.02,
      maxCameraRatio: 8,
      // Panning and zooming are done by camera.js (bitmap motion, one redraw at the end).
      enableCameraPanning: false,
      enableCameraZooming: false,
      stagePadding: 64, // room for group outlines and names around the outermost nodes
    });
    // Group outlines under the links, group names above the node labels.
    this.overlay = this.sigma.createCanvas("groups", { beforeLayer: "edges" });
    this.overlayCtx = this.overlay.getContext("2d");
    this.overlayTop = this.sigma.createCanvas("groupNames", { afterLayer: "labels" });
    this.overlayTopCtx = this.overlayTop.getContext("2d");
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
    for (const [c, ctx, phase] of [[this.overlay, this.overlayCtx, "under"], [this.overlayTop, this.overlayTopCtx, "over"]]) {
      if (c.width !== Math.round(width * dpr) || c.height !== Math.round(height * dpr)) {
        c.width = Math.round(width * dpr);
        c.height = Math.round(height * dpr);
        c.style.width = `${width}px`;
        c.style.height = `${height}px`;
      }
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, width, height);
      this.drawOverlay?.(ctx, this, phase);
    }
  }

  on(event, fn) {
    // sigma's payloads carry `node` / `edge` and `event`; pass them on as is.
    this.sigma.on(event, fn);
  }

  refresh() {
    this.sigma.refresh();
  }

  /** While on (a node is dragged), the framing of the graph stays as it is. */
  freezeFraming(on) {
    this.sigma.setCustomBBox(on ? this.sigma.getBBox() : null);
  }

  /** Positions changed (layout progress): sigma listens to the graph and has scheduled it. */
  refreshPositions() {}

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

  getCamera() {
    const { x, y, ratio } = this.sigma.getCamera().getState();
    return { x, y, ratio };
  }

  framedToViewport(p, state) {
    return this.sigma.framedGraphToViewport(p, { cameraState: { angle: 0, ...state } });
  }

  viewportToFramed(v, state) {
    return this.sigma.viewportToFramedGraph(v, { cameraState: { angle: 0, ...state } });
  }

  once(event, fn) {
    this.sigma.once(event, fn);
  }

  cameraRatio() {
    return this.sigma.getCamera().getState().ratio;
  }

  /** Sets the camera at once (x, y in the unit square framing the graph; ratio 1 = all). */
  setCamera(state) {
    // Sigma's camera refuses changes while its own panning and zooming are off (they are, so
    // that its mouse handling leaves the camera to camera.js): lift that for this call.
    const cam = this.sigma.getCamera();
    cam.enabledPanning = cam.enabledZooming = true;
    cam.setState(state);
    cam.enabledPanning = cam.enabledZooming = false;
  }

  resize() {
    this.sigma.resize();
    this.sigma.refresh();
  }

  kill() {
    this.sigma.kill();
  }
}
