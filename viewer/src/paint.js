// 2D painting of the drawn graph, shared by the canvas renderer (where WebGL is missing) and the
// PNG and SVG exports, so that all three show what sigma shows: the same positions, sizes,
// colours, arrow heads and labels. Drawing goes through a small target interface with a
// Canvas 2D and an SVG implementation.

const CHUNK = 2000; // segments or triangles per path

const LABEL_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";

/** Canvas 2D target. Lines and arrow heads are batched per colour and width: one path each. */
export class CanvasTarget {
  constructor(ctx) {
    this.ctx = ctx;
  }
  lines(batches) {
    const { ctx } = this;
    ctx.lineCap = "butt";
    for (const [key, coords] of batches) {
      const [color, width] = key.split("|");
      ctx.strokeStyle = color;
      ctx.lineWidth = Number(width);
      for (let start = 0; start < coords.length; start += 4 * CHUNK) {
        ctx.beginPath();
        const end = Math.min(coords.length, start + 4 * CHUNK);
        for (let i = start; i < end; i += 4) {
          ctx.moveTo(coords[i], coords[i + 1]);
          ctx.lineTo(coords[i + 2], coords[i + 3]);
        }
        ctx.stroke();
      }
    }
  }
  triangles(batches) {
    const { ctx } = this;
    for (const [color, coords] of batches) {
      ctx.fillStyle = color;
      // fill() closes each subpath itself; closePath() on tens of thousands of subpaths in one
      // path is quadratic in Skia (seconds per frame at 50k arrow heads). Paths are also cut
      // into chunks to keep each one small.
      for (let start = 0; start < coords.length; start += 6 * CHUNK) {
        ctx.beginPath();
        const end = Math.min(coords.length, start + 6 * CHUNK);
        for (let i = start; i < end; i += 6) {
          ctx.moveTo(coords[i], coords[i + 1]);
          ctx.lineTo(coords[i + 2], coords[i + 3]);
          ctx.lineTo(coords[i + 4], coords[i + 5]);
        }
        ctx.fill();
      }
    }
  }
  circle(x, y, r, fill, border, borderWidth) {
    const { ctx } = this;
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fillStyle = border;
    ctx.fill();
    if (borderWidth > 0 && r - borderWidth > 0) {
      ctx.beginPath();
      ctx.arc(x, y, r - borderWidth, 0, 2 * Math.PI);
      ctx.fillStyle = fill;
      ctx.fill();
    }
  }
  polygon(points, fill, stroke, width, dash) {
    const { ctx } = this;
    ctx.beginPath();
    points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.closePath();
    if (fill) {
      ctx.fillStyle = fill;
      ctx.fill();
    }
    if (stroke) {
      ctx.setLineDash(dash ?? []);
      ctx.strokeStyle = stroke;
      ctx.lineWidth = width;
      ctx.lineJoin = "round";
      ctx.stroke();
      ctx.setLineDash([]);
    }
  }
  text(x, y, str, { size = 12, weight = "500", color = "#1f2937", halo = null, align = "left", baseline = "middle" } = {}) {
    const { ctx } = this;
    ctx.font = `${weight} ${size}px ${LABEL_FONT}`;
    ctx.textAlign = align;
    ctx.textBaseline = baseline;
    if (halo) {
      ctx.lineWidth = 3;
      ctx.strokeStyle = halo;
      ctx.lineJoin = "round";
      ctx.strokeText(str, x, y);
    }
    ctx.fillStyle = color;
    ctx.fillText(str, x, y);
  }
  measure(str, size, weight = "500") {
    this.ctx.font = `${weight} ${size}px ${LABEL_FONT}`;
    return this.ctx.measureText(str).width;
  }
}

// XML 1.0 allows no C0 control characters but TAB, LF and CR, and no lone surrogates; names
// come from EC2 tags and DNS too, so they are replaced (U+FFFD) for the SVG to stay valid XML.
const XML_INVALID = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
export const esc = (s) => String(s).replace(XML_INVALID, "\uFFFD").replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const f = (x) => (Math.round(x * 10) / 10).toString();

/** A paint attribute; `#rrggbbaa` becomes colour plus `-opacity`, which SVG 1.1 readers know. */
function paintAttr(name, c) {
  if (c.length === 9) return `${name}="${c.slice(0, 7)}" ${name}-opacity="${(parseInt(c.slice(7), 16) / 255).toFixed(2)}"`;
  return `${name}="${esc(c)}"`;
}

/** SVG target: collects elements; `toString` gives the document. */
export class SvgTarget {
  constructor(width, height, background) {
    this.width = width;
    this.height = height;
    this.parts = [];
    if (background) this.parts.push(`<rect width="100%" height="100%" fill="${background}"/>`);
    // Text widths for label placement, from a canvas (SVG has no synchronous measure).
    this.measurer = new CanvasTarget(document.createElement("canvas").getContext("2d"));
  }
  lines(batches) {
    for (const [key, coords] of batches) {
      const [color, width] = key.split("|");
      let d = "";
      for (let i = 0; i < coords.length; i += 4) d += `M${f(coords[i])} ${f(coords[i + 1])}L${f(coords[i + 2])} ${f(coords[i + 3])}`;
      this.parts.push(`<path d="${d}" fill="none" ${paintAttr("stroke", color)} stroke-width="${width}"/>`);
    }
  }
  triangles(batches) {
    for (const [color, coords] of batches) {
      let d = "";
      for (let i = 0; i < coords.length; i += 6) d += `M${f(coords[i])} ${f(coords[i + 1])}L${f(coords[i + 2])} ${f(coords[i + 3])}L${f(coords[i + 4])} ${f(coords[i + 5])}Z`;
      this.parts.push(`<path d="${d}" ${paintAttr("fill", color)}/>`);
    }
  }
  circle(x, y, r, fill, border, borderWidth) {
    const inner = Math.max(r - borderWidth / 2, 0);
    this.parts.push(`<circle cx="${f(x)}" cy="${f(y)}" r="${f(inner)}" ${paintAttr("fill", fill)} ${paintAttr("stroke", border)} stroke-width="${f(borderWidth)}"/>`);
  }
  polygon(points, fill, stroke, width, dash) {
    const pts = points.map(([x, y]) => `${f(x)},${f(y)}`).join(" ");
    this.parts.push(`<polygon points="${pts}" ${fill ? paintAttr("fill", fill) : 'fill="none"'} ${stroke ? `${paintAttr("stroke", stroke)} stroke-width="${width}" stroke-linejoin="round"${dash ? ` stroke-dasharray="${dash.join(" ")}"` : ""}` : ""}/>`);
  }
  text(x, y, str, { size = 12, weight = "500", color = "#1f2937", halo = null, align = "left", baseline = "middle" } = {}) {
    const anchor = { left: "start", center: "middle", right: "end" }[align];
    const dy = baseline === "middle" ? "0.35em" : baseline === "top" ? "0.8em" : "0";
    const haloAttr = halo ? ` stroke="${halo}" stroke-width="3" paint-order="stroke" stroke-linejoin="round"` : "";
    this.parts.push(`<text x="${f(x)}" y="${f(y)}" dy="${dy}" text-anchor="${anchor}" font-family="${esc(LABEL_FONT)}" font-size="${size}" font-weight="${weight}" ${paintAttr("fill", color)}${haloAttr}>${esc(str)}</text>`);
  }
  measure(str, size, weight) {
    return this.measurer.measure(str, size, weight);
  }
  toString() {
    return `<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="${this.width}" height="${this.height}" viewBox="0 0 ${this.width} ${this.height}">\n${this.parts.join("\n")}\n</svg>\n`;
  }
}

/**
 * Paints the graph through `target` with the given view transform:
 * `toViewport({x, y})` -> pixel point, `scaleSize(size)` -> pixels. Returns what was drawn
 * (counts of nodes, edges and labels inside the viewport) for the test hooks.
 */
export function paintGraph(target, graph, view) {
  const { toViewport, scaleSize, width, height, nodeReducer, edgeReducer, labelThreshold = 9, skipEdges = false, labels = true } = view;
  const pos = new Map();
  const nodes = [];
  graph.forEachNode((key, attrs) => {
    const d = nodeReducer ? nodeReducer(key, attrs) : attrs;
    if (d.hidden) return;
    const p = toViewport(d);
    const r = scaleSize(d.size);
    pos.set(key, [p.x, p.y, r]);
    nodes.push({ key, d, x: p.x, y: p.y, r });
  });
  const inView = (x, y, pad) => x >= -pad && y >= -pad && x <= width + pad && y <= height + pad;
  let edgesDrawn = 0;
  if (!skipEdges) {
    const layers = [new Map(), new Map()];
    const heads = [new Map(), new Map()];
    graph.forEachEdge((key, attrs, s, t) => {
      const d = edgeReducer ? edgeReducer(key, attrs) : attrs;
      if (d.hidden) return;
      const a = pos.get(s);
      const b = pos.get(t);
      if (!a || !b) return;
      // Cull edges whose both ends lie beyond the same side of the viewport.
      if ((a[0] < 0 && b[0] < 0) || (a[1] < 0 && b[1] < 0) || (a[0] > width && b[0] > width) || (a[1] > height && b[1] > height)) return;
      const dx = b[0] - a[0];
      const dy = b[1] - a[1];
      const len = Math.hypot(dx, dy);
      if (len < 1e-6) return;
      const w = Math.max(scaleSize(d.size), 0.5);
      const ux = dx / len;
      const uy = dy / len;
      const headLen = Math.min(Math.max(w * 4, 6), len * 0.5);
      const headW = Math.max(w * 3, 4.5) / 2;
      const tipX = b[0] - ux * b[2];
      const tipY = b[1] - uy * b[2];
      const baseX = tipX - ux * headLen;
      const baseY = tipY - uy * headLen;
      const z = d.zIndex > 0 ? 1 : 0;
      const lkey = `${d.color}|${(Math.round(w * 2) / 2).toFixed(1)}`;
      let arr = layers[z].get(lkey);
      if (!arr) layers[z].set(lkey, (arr = []));
      arr.push(a[0] + ux * a[2], a[1] + uy * a[2], baseX, baseY);
      let harr = heads[z].get(d.color);
      if (!harr) heads[z].set(d.color, (harr = []));
      harr.push(tipX, tipY, baseX - uy * headW, baseY + ux * headW, baseX + uy * headW, baseY - ux * headW);
      edgesDrawn++;
    });
    for (let z = 0; z < 2; z++) {
      target.lines(layers[z]);
      target.triangles(heads[z]);
    }
  }
  nodes.sort((p, q) => (p.d.zIndex ?? 0) - (q.d.zIndex ?? 0));
  let nodesDrawn = 0;
  for (const n of nodes) {
    if (!inView(n.x, n.y, n.r)) continue;
    const bw = n.r * (n.d.borderSize ?? 0.12);
    target.circle(n.x, n.y, n.r, n.d.color, n.d.borderColor ?? n.d.color, bw);
    nodesDrawn++;
  }
  let labelsDrawn = 0;
  if (labels) {
    // Labels of forced nodes first, then by size; skip any that would overlap a placed one.
    const cand = nodes
      .filter((n) => n.d.label && (n.d.forceLabel || n.r >= labelThreshold) && inView(n.x, n.y, 0))
      .sort((p, q) => (q.d.forceLabel ? 1 : 0) - (p.d.forceLabel ? 1 : 0) || q.r - p.r);
    const placed = [];
    // Like sigma's label grid: at most one unforced label per cell, so dense maps stay legible.
    const cells = new Set();
    for (const n of cand) {
      const cell = `${Math.floor(n.x / 160)},${Math.floor(n.y / 48)}`;
      if (!n.d.forceLabel && cells.has(cell)) continue;
      const w = target.measure(n.d.label, 12, "500");
      const box = [n.x + n.r + 3, n.y - 8, n.x + n.r + 3 + w, n.y + 8];
      if (!n.d.forceLabel && placed.some((b) => box[0] < b[2] && box[2] > b[0] && box[1] < b[3] && box[3] > b[1])) continue;
      cells.add(cell);
      placed.push(box);
      target.text(box[0], n.y, n.d.label, { size: 12, color: "#1f2937", halo: "#ffffffd0" });
      labelsDrawn++;
    }
  }
  return { nodes: nodesDrawn, edges: edgesDrawn, labels: labelsDrawn };
}
