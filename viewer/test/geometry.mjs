// Plane geometry for the scale test (issue 14, item 5): polygons as [[x, y], ...], boxes as
// {x, y, w, h}. Kept apart from the test so the unit tests can show each check can fail.

const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);

/** Whether segments ab and cd cross or touch. */
export function segmentsIntersect(a, b, c, d) {
  const d1 = cross(c, d, a), d2 = cross(c, d, b), d3 = cross(a, b, c), d4 = cross(a, b, d);
  if (((d1 > 0 && d2 < 0) || (d1 < 0 && d2 > 0)) && ((d3 > 0 && d4 < 0) || (d3 < 0 && d4 > 0))) return true;
  const on = (p, q, r) => Math.min(p[0], q[0]) <= r[0] && r[0] <= Math.max(p[0], q[0]) && Math.min(p[1], q[1]) <= r[1] && r[1] <= Math.max(p[1], q[1]);
  return (d1 === 0 && on(c, d, a)) || (d2 === 0 && on(c, d, b)) || (d3 === 0 && on(a, b, c)) || (d4 === 0 && on(a, b, d));
}

/** Whether a point lies inside a polygon (even-odd rule; points on the boundary may go either way). */
export function pointInPolygon(p, poly) {
  let inside = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i], [xj, yj] = poly[j];
    if (yi > p[1] !== yj > p[1] && p[0] < ((xj - xi) * (p[1] - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

const bbox = (poly) => {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const [x, y] of poly) {
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
  }
  return [x0, y0, x1, y1];
};

/** Whether two polygons share any point: crossing edges, or one inside the other. */
export function polygonsIntersect(p, q) {
  const a = bbox(p), b = bbox(q);
  if (a[2] < b[0] || b[2] < a[0] || a[3] < b[1] || b[3] < a[1]) return false;
  for (let i = 0; i < p.length; i++) {
    const p1 = p[i], p2 = p[(i + 1) % p.length];
    for (let j = 0; j < q.length; j++) if (segmentsIntersect(p1, p2, q[j], q[(j + 1) % q.length])) return true;
  }
  return pointInPolygon(p[0], q) || pointInPolygon(q[0], p);
}

/** Whether polygon `inner` lies inside `outer` (every vertex inside, no edges crossing). */
export function polygonInside(inner, outer) {
  if (!inner.every((v) => pointInPolygon(v, outer))) return false;
  for (let i = 0; i < inner.length; i++) {
    for (let j = 0; j < outer.length; j++) if (segmentsIntersect(inner[i], inner[(i + 1) % inner.length], outer[j], outer[(j + 1) % outer.length])) return false;
  }
  return true;
}

/** Whether two boxes overlap (touching edges do not). */
export const boxesOverlap = (a, b) => a.x < b.x + b.w && a.x + a.w > b.x && a.y < b.y + b.h && a.y + a.h > b.y;

/** Whether a box and a disc (cx, cy, r) overlap. */
export function boxDisc(b, cx, cy, r) {
  const px = Math.max(b.x, Math.min(cx, b.x + b.w));
  const py = Math.max(b.y, Math.min(cy, b.y + b.h));
  return (px - cx) ** 2 + (py - cy) ** 2 < r * r;
}

/** Pairs [i, j] of overlapping boxes (a sweep over x, so 5,000 labels stay fast). */
export function overlappingBoxes(boxes) {
  const order = boxes.map((b, i) => i).sort((i, j) => boxes[i].x - boxes[j].x);
  const out = [];
  for (let a = 0; a < order.length; a++) {
    const p = boxes[order[a]];
    for (let b = a + 1; b < order.length && boxes[order[b]].x < p.x + p.w; b++) if (boxesOverlap(p, boxes[order[b]])) out.push([order[a], order[b]]);
  }
  return out;
}
