// Exports of the current view: PNG and SVG images painted as on screen (paint.js), and the link
// to this view. The CSV (LucidChart, draw.io) and DOT exports come from the collector, which
// writes every export format (one code path with its CLI): the links point at the whole map's
// export (`syncLinks`); with "what is on screen" (the default) a click posts the nodes and links
// shown (model.js `visibleSubset`) to the same URL and saves what comes back.

import { downloadExport, exportUrl, readToken } from "./api.js";
import { BACKGROUND } from "./colors.js";
import { $, h } from "./dom.js";
import { CanvasTarget, SvgTarget, paintGraph } from "./paint.js";
import { visibleSubset } from "./model.js";
import { VIEW_NAMES } from "./panels.js";

/** The collector-side exports: link id and API format. */
const COLLECTOR_FORMATS = [["csv", "csv"], ["drawio", "drawio"], ["dot", "dot"]];

export class Exports {
  constructor(app) {
    this.app = app;
    /** What the last image export drew (for the browser tests). */
    this.lastExport = null;
  }

  /**
   * With a read token, the CSV and DOT links download through fetch (a plain link cannot send
   * the token); without one they stay plain links.
   */
  bind() {
    for (const [id] of COLLECTOR_FORMATS) {
      const a = $(`#export-${id}`);
      a.addEventListener("click", (e) => {
        if (!a.href) return;
        const whole = $("#export-scope").value === "all";
        // The whole map without a token: the plain link does it.
        if (whole && !readToken()) return;
        e.preventDefault();
        if (!whole && !this.app.filtered) return;
        const subset = whole ? undefined : this.subset();
        downloadExport(a.getAttribute("href"), subset).catch((err) => this.app.panels.showBanner(`Export failed: ${err.message}`));
      });
    }
  }

  /** What is on screen, as the collector's subset export takes it. */
  subset() {
    return visibleSubset(this.app.data.index, this.app.filtered);
  }

  /** Points the export links at the collector's export of the loaded (whole) map. */
  syncLinks() {
    if (this.app.data) {
      const q = this.app.data.query;
      for (const [id, fmt] of COLLECTOR_FORMATS) $(`#export-${id}`).href = exportUrl(q, fmt);
    }
  }

  fileStem() {
    const s = this.app.state;
    const when = s.mode === "range" ? `${s.from}_${s.to}`.replaceAll(":", "") : s.mode === "diff" ? `${s.base}_vs_${s.day}` : s.day;
    return `trafficmap-${s.view}-${when}`;
  }

  /** Paints the current view (as on screen) into a target: groups, links, nodes, labels, title. */
  paintExport(target, width, height) {
    const r = this.app.renderer;
    // The app's layers as on screen (outlines; names and labels placed by labels.js).
    const groups = (phase) => this.app.drawLayers(target, r, phase);
    groups("under");
    const drawn = paintGraph(target, this.app.scene.graph, {
      toViewport: (p) => r.graphToViewport(p),
      scaleSize: (x) => r.scaleSize(x),
      width,
      height,
      nodeReducer: this.app.reducers.nodeReducer,
      edgeReducer: this.app.reducers.edgeReducer,
      labels: false,
    });
    // issue 14 item 2 (v14-links): the bundles as on screen (the CSV and DOT exports keep the
    // real links): over the nodes, under the group names, their counts last.
    this.app.drawBundles(target, r, "lines");
    groups("over");
    this.app.drawBundles(target, r, "counts");
    const s = this.app.state;
    const title = `trafficmap · ${VIEW_NAMES[s.view]} · ${s.mode === "diff" ? `${s.base} → ${s.day}` : s.mode === "range" ? `${s.from} – ${s.to} UTC` : s.day}`;
    target.text(12, 16, title, { size: 14, weight: "650", halo: "#ffffffe0" });
    return drawn;
  }

  async exportImage(format) {
    if (!this.app.renderer || !this.app.scene) return;
    const { width, height } = this.app.renderer.getDimensions();
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
}
