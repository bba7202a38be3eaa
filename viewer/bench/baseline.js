// The baseline for `cargo xtask bench viewer`: the old viewer's approach, a d3-force simulation
// drawn as SVG (one <circle> per node, one <line> per link, attributes updated on every tick),
// with gravity towards env focus points and link strength by traffic. Same data, same browser.
import { forceLink, forceManyBody, forceSimulation, forceX, forceY } from "d3-force";

const NS = "http://www.w3.org/2000/svg";
const result = { state: "loading", ticks: 0 };
window.__baseline = result;

const res = await fetch(`/api/v1/maps?view=instances&day=${new URLSearchParams(location.search).get("day")}`);
const doc = await res.json();
const width = window.innerWidth;
const height = window.innerHeight;
const svg = document.createElementNS(NS, "svg");
svg.setAttribute("width", width);
svg.setAttribute("height", height);
document.body.append(svg);
const g = document.createElementNS(NS, "g");
svg.append(g);

const envs = [...new Set(doc.nodes.map((n) => n.env ?? "none"))].sort();
const focus = new Map(envs.map((e, i) => [e, [(width * (i + 1)) / (envs.length + 1), height / 2]]));
const nodes = doc.nodes.map((n) => ({ id: n.id, env: n.env ?? "none", r: 2 + Math.log10(1 + n.bytes_in + n.bytes_out) / 2 }));
const links = doc.links.map((l) => ({ source: l.source, target: l.target, w: Math.log10(1 + l.bytes_to_target + l.bytes_to_source) }));
const lineEls = links.map(() => {
  const el = document.createElementNS(NS, "line");
  el.setAttribute("stroke", "#9aa5b5");
  g.append(el);
  return el;
});
const circleEls = nodes.map((n) => {
  const el = document.createElementNS(NS, "circle");
  el.setAttribute("r", n.r.toFixed(1));
  el.setAttribute("fill", "#4e79a7");
  g.append(el);
  return el;
});

result.state = "running";
result.start = performance.now();
const sim = forceSimulation(nodes)
  .force("charge", forceManyBody().strength(-12).theta(0.9))
  .force("link", forceLink(links).id((d) => d.id).strength((l) => 0.02 * l.w))
  .force("x", forceX((d) => focus.get(d.env)[0]).strength(0.08))
  .force("y", forceY((d) => focus.get(d.env)[1]).strength(0.08))
  .on("tick", () => {
    result.ticks++;
    for (let i = 0; i < links.length; i++) {
      const l = links[i];
      const el = lineEls[i];
      el.setAttribute("x1", l.source.x);
      el.setAttribute("y1", l.source.y);
      el.setAttribute("x2", l.target.x);
      el.setAttribute("y2", l.target.y);
    }
    for (let i = 0; i < nodes.length; i++) {
      circleEls[i].setAttribute("cx", nodes[i].x);
      circleEls[i].setAttribute("cy", nodes[i].y);
    }
  })
  .on("end", () => {
    result.state = "settled";
    result.millis = performance.now() - result.start;
  });
result.maxTicks = Math.ceil(Math.log(sim.alphaMin()) / Math.log(1 - sim.alphaDecay()));

// Pan and zoom the way d3-zoom does: every mouse event sets one transform on the group, and the
// browser re-renders the SVG.
let tx = 0, ty = 0, k = 1, dragging = null;
const apply = () => g.setAttribute("transform", `translate(${tx},${ty}) scale(${k})`);
svg.addEventListener("mousedown", (e) => (dragging = { x: e.clientX, y: e.clientY }));
window.addEventListener("mouseup", () => (dragging = null));
window.addEventListener("mousemove", (e) => {
  if (!dragging) return;
  tx += e.clientX - dragging.x;
  ty += e.clientY - dragging.y;
  dragging = { x: e.clientX, y: e.clientY };
  apply();
});
svg.addEventListener("wheel", (e) => {
  e.preventDefault();
  const f = Math.exp(-e.deltaY / 300);
  tx = e.clientX - (e.clientX - tx) * f;
  ty = e.clientY - (e.clientY - ty) * f;
  k *= f;
  apply();
}, { passive: false });
window.__baselineStop = () => sim.stop();
