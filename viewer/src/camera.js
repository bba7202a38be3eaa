// Panning and zooming for both renderers.
//
// Drawing 50,000 links takes a software renderer (headless Chromium's SwiftShader, or the
// canvas fallback) far longer than a frame. So while the camera moves, the last drawn frame is
// moved and scaled as a bitmap (a CSS transform, done by the compositor at full frame rate),
// and the map is redrawn once, sharp, when the motion stops. When the renderer draws a frame
// quickly (a real GPU, a small map), the camera is applied live instead.

const IDLE_COMMIT_MS = 140; // a pause this long after the last wheel step ends the motion
const LIVE_FRAME_MS = 14; // redraw live when a full frame takes less than this
const DRAG_TOLERANCE = 4;
const DOUBLE_CLICK_MS = 500;
const MIN_RATIO = 0.02;
const MAX_RATIO = 8;

export class CameraController {
  /**
   * `frame`: the focusable element that receives input; `view`: the element holding the
   * renderer's canvases, transformed during motion; `renderer`: SigmaRenderer or CanvasRenderer.
   */
  constructor(frame, view, renderer) {
    this.frame = frame;
    this.view = view;
    this.renderer = renderer;
    this.preview = null;
    this.frameMs = Infinity; // unknown until a commit has been timed
    this.timer = 0;
    this.anim = 0;
    this.dragEndedAt = 0;
    this.swallowClicksUntil = 0;
    this.lastDown = null;
    this.listeners = [];
    this.bind();
  }

  get moving() {
    return this.preview !== null;
  }

  state() {
    return this.preview ?? this.renderer.getCamera();
  }

  clamp(s) {
    return { x: s.x, y: s.y, ratio: Math.min(MAX_RATIO, Math.max(MIN_RATIO, s.ratio)) };
  }

  /** Moves the camera to `next`: live, or as a bitmap transform until `commit`. */
  move(next) {
    next = this.clamp(next);
    if (this.frameMs < LIVE_FRAME_MS) {
      this.renderer.setCamera(next);
      return;
    }
    if (!this.preview) {
      this.base = this.renderer.getCamera();
      this.onStart?.();
    }
    this.preview = next;
    // The affine map from the drawn frame (camera `base`) to the previewed one: scale by the
    // ratio change about a reference point, which lands where the preview camera puts it.
    const { width, height } = this.renderer.getDimensions();
    const centre = { x: width / 2, y: height / 2 };
    const ref = this.renderer.viewportToFramed(centre, this.base);
    const moved = this.renderer.framedToViewport(ref, next);
    const s = this.base.ratio / next.ratio;
    this.view.style.transformOrigin = "0 0";
    this.view.style.transform = `matrix(${s}, 0, 0, ${s}, ${moved.x - s * centre.x}, ${moved.y - s * centre.y})`;
  }

  /** Ends a motion: the renderer draws the final camera, then the transform is dropped. */
  commit() {
    clearTimeout(this.timer);
    if (!this.preview) return;
    const target = this.preview;
    this.preview = null;
    const t0 = performance.now();
    this.renderer.once("afterRender", () => {
      this.view.style.transform = "";
      // Time to the frame after the redraw, the redraw's true cost (GPU work included).
      requestAnimationFrame(() => {
        this.frameMs = performance.now() - t0;
        this.onCommit?.(this.frameMs);
      });
    });
    this.renderer.setCamera(target);
  }

  commitSoon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.commit(), IDLE_COMMIT_MS);
  }

  /** Animates to a camera state over `duration` ms (zoom buttons, keys, framing a search). */
  animateTo(target, duration = 250) {
    cancelAnimationFrame(this.anim);
    const from = this.state();
    target = this.clamp({ ...from, ...target });
    const start = performance.now();
    return new Promise((resolve) => {
      const step = () => {
        const t = duration > 0 ? Math.min(1, (performance.now() - start) / duration) : 1;
        const e = t < 0.5 ? 2 * t * t : 1 - (-2 * t + 2) ** 2 / 2;
        // Zoom interpolates geometrically, so equal times give equal zoom factors.
        this.move({ x: from.x + (target.x - from.x) * e, y: from.y + (target.y - from.y) * e, ratio: from.ratio * (target.ratio / from.ratio) ** e });
        if (t < 1) this.anim = requestAnimationFrame(step);
        else {
          this.commit();
          resolve();
        }
      };
      step();
    });
  }

  zoom(factor, duration = 200) {
    return this.animateTo({ ratio: this.state().ratio / factor }, duration);
  }

  reset(duration = 300) {
    return this.animateTo({ x: 0.5, y: 0.5, ratio: 1 }, duration);
  }

  /** Pans by pixels. */
  panBy(dx, dy, duration = 0) {
    const s = this.state();
    const { width, height } = this.renderer.getDimensions();
    const a = this.renderer.viewportToFramed({ x: width / 2, y: height / 2 }, s);
    const b = this.renderer.viewportToFramed({ x: width / 2 + dx, y: height / 2 + dy }, s);
    return this.animateTo({ x: s.x + (b.x - a.x), y: s.y + (b.y - a.y) }, duration);
  }

  /** Zooms by `factor` keeping the framed point under viewport point `v` in place. */
  zoomAt(v, factor) {
    const s = this.state();
    const before = this.renderer.viewportToFramed(v, s);
    const next = this.clamp({ ...s, ratio: s.ratio / factor });
    const after = this.renderer.viewportToFramed(v, next);
    this.move({ x: next.x + before.x - after.x, y: next.y + before.y - after.y, ratio: next.ratio });
  }

  /**
   * Whether a click now is the end of a drag, or the second click of a double-click on a node
   * (and must not select or deselect).
   */
  justDragged() {
    const now = performance.now();
    return now - this.dragEndedAt < 80 || now < this.swallowClicksUntil;
  }

  on(target, type, fn, opts) {
    target.addEventListener(type, fn, opts);
    this.listeners.push(() => target.removeEventListener(type, fn, opts));
  }

  bind() {
    const local = (e) => {
      const r = this.frame.getBoundingClientRect();
      return { x: e.clientX - r.left, y: e.clientY - r.top };
    };
    this.on(this.frame, "wheel", (e) => {
      e.preventDefault();
      cancelAnimationFrame(this.anim);
      // Pixel deltas (touchpads) zoom smoothly; line deltas (wheels) in fixed steps.
      const dy = e.deltaMode === 1 ? e.deltaY * 33 : e.deltaY;
      this.zoomAt(local(e), Math.exp(-dy / 300));
      this.commitSoon();
    }, { passive: false, capture: true });
    this.on(this.frame, "mousedown", (e) => {
      if (e.button !== 0) return;
      cancelAnimationFrame(this.anim);
      const p = local(e);
      const now = performance.now();
      // A second press on the same spot soon after one on a node double-clicks that node, even
      // if the first click moved the map under the pointer (the details panel opens and the map
      // narrows), which the renderers' own double-click would miss.
      const first = this.lastDown;
      this.lastDown = null;
      if (first?.node && now - first.t < DOUBLE_CLICK_MS && Math.hypot(p.x - first.p.x, p.y - first.p.y) <= DRAG_TOLERANCE) {
        this.swallowClicksUntil = now + DOUBLE_CLICK_MS;
        this.onNodeDoubleClick?.(first.node);
        this.drag = { start: p, last: p, moved: false, node: null };
        return;
      }
      // On a node, a drag moves that node (the app pins it); elsewhere it pans.
      const node = this.nodeAt?.(p) ?? null;
      this.lastDown = { t: now, p, node };
      this.drag = { start: p, last: p, moved: false, node };
    }, { capture: true });
    this.on(window, "mousemove", (e) => {
      const d = this.drag;
      if (!d) return;
      const p = local(e);
      if (!d.moved && Math.hypot(p.x - d.start.x, p.y - d.start.y) <= DRAG_TOLERANCE) return;
      // A press that became a drag is not the first half of a double-click.
      this.lastDown = null;
      if (d.node) {
        if (!d.moved) this.onNodeDrag?.(d.node, p, "start");
        d.moved = true;
        d.last = p;
        this.onNodeDrag?.(d.node, p, "move");
        return;
      }
      d.moved = true;
      const s = this.state();
      const a = this.renderer.viewportToFramed(d.last, s);
      const b = this.renderer.viewportToFramed(p, s);
      d.last = p;
      this.move({ x: s.x - (b.x - a.x), y: s.y - (b.y - a.y), ratio: s.ratio });
      // Capture phase: sigma stops the propagation of the mouse events on its canvases.
    }, { capture: true });
    this.on(window, "mouseup", (e) => {
      const d = this.drag;
      this.drag = null;
      if (d?.moved) {
        this.dragEndedAt = performance.now();
        if (d.node) this.onNodeDrag?.(d.node, local(e), "end");
        else this.commit();
      }
    }, { capture: true });
  }

  kill() {
    clearTimeout(this.timer);
    cancelAnimationFrame(this.anim);
    for (const off of this.listeners) off();
    this.view.style.transform = "";
  }
}
