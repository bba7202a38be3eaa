// The panels that show what the map holds, redrawn from the app's state and data: the tooltip,
// the details of a node or link, the legend, the filter summary, the status line, the layout
// progress and the banner. They read the app and change nothing but their own elements (their
// buttons select through `app.select`).

import { DIFF_COLORS, COST_COLORS, EDGE_CROSS_ENV, EDGE_NEUTRAL, EXTERNAL, KIND_COLORS, UNKNOWN, tint } from "./colors.js";
import { $, fill, h } from "./dom.js";
import { fmtSeen, fmtBytes, fmtCount, fmtUsd, linkBytes, peersOf } from "./model.js";
import { EDGE_MAX, PINNED } from "./scene.js";
// issue 14 items 2 and 3 (v14-links)
import { TOP_N, TOP_N_ABOVE, topLinksOf } from "./links.js";
import { groupLabel } from "./model.js";

export const VIEW_NAMES = { instances: "Instances", clusters: "Clusters", "security-groups": "Security groups", workloads: "Workloads" };
export const KIND_NAMES = { host: "host", unmonitored: "unmonitored host", external: "external", cluster: "cluster", security_group: "security group", workload: "workload" };

// ---- issue 11 (containers, Kubernetes, Service NAT): optional fields of newer maps.
// A node's containers ("name (pod) · id"), a workload's hosts, a link's Service addresses.
export function containerText(c) {
  const where = [c.pod, c.namespace && !c.pod ? c.namespace : null].filter(Boolean).join(", ");
  return `${c.name ?? c.workload ?? "container"}${where ? ` (${where})` : ""} · ${c.id.slice(0, 12)}`;
}
function containerRows(row, n) {
  return [
    row("namespace", "Namespace", n.namespace),
    row("workload_kind", "Workload kind", n.workload_kind),
    n.containers?.length ? [h("dt", {}, `Containers (${n.containers.length})`), h("dd", { "data-field": "containers" }, h("ul", { class: "containers" }, ...n.containers.map((c) => h("li", { title: c.id }, containerText(c)))))] : null,
    row("hosts", "Hosts", n.hosts?.length ? n.hosts.join(", ") : null),
  ];
}
// ---- end issue 11 ----

// ---- issue 12 item 4 (service names): ports with the names the map gives them, "5432/postgresql".
// A link's `services` is parallel to its `server_ports` ("" for a port without a name) and absent
// in older maps; a node's ports take the names of the links it serves.
export function portLabels(ports, services) {
  return ports.map((p, i) => (services?.[i] ? `${p}/${services[i]}` : String(p))).join(", ");
}
function nodePortLabels(index, n) {
  const names = new Map();
  for (const i of index.adjacency.get(n.id) ?? []) {
    const l = index.links[i];
    if (l.target === n.id) (l.services ?? []).forEach((s, k) => s && names.set(l.server_ports[k], s));
  }
  return portLabels(n.server_ports, n.server_ports.map((p) => names.get(p)));
}
// ---- end issue 12 item 4 ----

export class Panels {
  constructor(app) {
    this.app = app;
  }

  showNodeTooltip(id) {
    const n = this.app.data.index.byId.get(id);
    if (!n) return;
    const lines = [
      h("div", { class: "t" }, n.label),
      h("div", { class: "m" }, [KIND_NAMES[n.kind], n.env, n.archdomain].filter(Boolean).join(" · ")),
      h("div", {}, `in ${fmtBytes(n.bytes_in)} · out ${fmtBytes(n.bytes_out)}`),
    ];
    if (n.diff && n.diff !== "same") lines.push(h("div", {}, n.diff === "new" ? "new since the earlier day" : "gone since the earlier day"));
    this.showTooltipAt(this.app.scene.graph.getNodeAttributes(id), lines);
  }

  showEdgeTooltip(edge) {
    const l = this.app.data.index.links[Number(edge)];
    const [s, t] = this.app.scene.graph.extremities(edge);
    const a = this.app.scene.graph.getNodeAttributes(s);
    const b = this.app.scene.graph.getNodeAttributes(t);
    const lines = [
      h("div", { class: "t" }, `${this.app.data.index.byId.get(s).label} → ${this.app.data.index.byId.get(t).label}`),
      h("div", { class: "m" }, `port ${portLabels(l.server_ports, l.services) || "–"} · ${fmtCount(l.connections)} connections`),
      h("div", {}, `→ ${fmtBytes(l.bytes_to_target)} · ← ${fmtBytes(l.bytes_to_source)}`),
    ];
    if (l.diff) lines.push(h("div", {}, diffText(l)));
    this.showTooltipAt({ x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 }, lines);
  }

  showTooltipAt(graphPoint, children) {
    const tip = $("#tooltip");
    tip.replaceChildren(...children);
    const p = this.app.renderer.graphToViewport(graphPoint);
    tip.hidden = false;
    const { width } = this.app.renderer.getDimensions();
    const x = Math.min(p.x + 14, width - tip.offsetWidth - 8);
    tip.style.left = `${Math.max(8, x)}px`;
    tip.style.top = `${Math.max(8, p.y + 14)}px`;
  }

  hideTooltip() {
    $("#tooltip").hidden = true;
  }

  renderDetails() {
    const panel = $("#details");
    if (!this.app.data || !this.app.scene) {
      panel.hidden = true;
      return;
    }
    const id = this.app.state.sel;
    if (this.app.linkSel && this.app.scene.graph.hasEdge(this.app.linkSel)) return this.renderLinkDetails(panel, this.app.data.index.links[Number(this.app.linkSel)]);
    if (!id || !this.app.data.index.byId.has(id)) {
      panel.hidden = true;
      this.app.renderer?.resize();
      return;
    }
    const { index } = this.app.data;
    const n = index.byId.get(id);
    const row = (field, label, value) => (value === null || value === undefined || value === "" ? null : [h("dt", {}, label), h("dd", { "data-field": field }, value)]);
    const instance = n.instance_id ? [n.instance_id, n.instance_type, n.availability_zone, n.lifecycle].filter(Boolean).join(" · ") : null;
    // Optional fields of newer collectors (labels, region, agent health) show when present.
    const labels = n.labels && Object.keys(n.labels).length ? Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(", ") : null;
    const health = n.health ? `${fmtCount(n.health.reports)} reports${n.health.probe_drops ? ` · ${fmtCount(n.health.probe_drops)} probe drops (bytes may be low)` : ""}${n.health.spool_dropped ? ` · ${fmtCount(n.health.spool_dropped)} reports lost` : ""}` : null;
    // issue 12 item 5: host health from the agent (last sample of the range, largest load1).
    const hs = n.host;
    const hostStats = hs ? `up ${Math.floor(hs.uptime_seconds / 86400)}d ${Math.floor((hs.uptime_seconds % 86400) / 3600)}h · load ${[hs.load1, hs.load5, hs.load15].map((v) => v.toFixed(2)).join(" / ")} (max ${hs.load1_max.toFixed(2)}) · ${hs.cpus} CPU${hs.cpus === 1 ? "" : "s"} · memory ${hs.memory_total_bytes ? Math.round((100 * (hs.memory_total_bytes - hs.memory_available_bytes)) / hs.memory_total_bytes) : 0}% used of ${fmtBytes(hs.memory_total_bytes)} · at ${hs.sampled_at.replace("T", " ").replace(/(\.\d+)?Z$/, "")} UTC` : null;
    const shown = this.app.scene.graph.hasNode(id);
    const peers = peersOf(index, id, shown ? this.app.filtered.links : null);
    const self = index.selfLinks.filter((l) => l.source === id);
    fill(panel, 
      h("header", {},
        h("div", { style: "flex:1" }, h("h2", {}, n.label), h("span", { class: "kind" }, KIND_NAMES[n.kind]),
          n.diff && n.diff !== "same" ? h("span", { class: "diff-tag", style: `background:${DIFF_COLORS[n.diff]};margin-left:6px` }, n.diff) : null),
        h("button", { type: "button", class: "icon", "aria-label": "Close details", onclick: () => this.app.select(null) }, "×")),
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
        row("members", "Members", n.members > 1 || n.kind === "cluster" || n.kind === "security_group" || n.kind === "workload" ? fmtCount(n.members) : null),
        ...containerRows(row, n), // issue 11
        row("security_groups", "Security groups", n.security_groups.join(", ")),
        row("processes", "Processes", n.processes.join(", ")),
        row("server_ports", "Server ports", nodePortLabels(index, n)),
        row("bytes_in", "Bytes in", fmtBytes(n.bytes_in)),
        row("bytes_out", "Bytes out", fmtBytes(n.bytes_out)),
        row("connections", "Connections", fmtCount(n.connections)),
        row("cost", "Transfer cost", fmtUsd(n.cost_usd)),
        row("health", "Agent", health),
        row("host", "Host health", hostStats), // issue 12 item 5
        self.length ? row("internal", "Internal traffic", `${fmtBytes(self.reduce((a, l) => a + linkBytes(l), 0))} (${n.kind === "cluster" || n.kind === "security_group" ? "between its members" : "to itself"}, not drawn)`) : null,
      ),
      h("h3", {}, `Peers (${peers.length})`),
      peers.length
        ? h("table", { class: "peers" },
            h("thead", {}, h("tr", {}, h("th", {}, "Peer"), h("th", {}, "Role"), h("th", {}, "Port"), h("th", { class: "num" }, "Sent"), h("th", { class: "num" }, "Received"), h("th", { class: "num" }, "Cost"))),
            h("tbody", {}, ...peers.map((p) =>
              h("tr", { "data-peer": p.peer.id },
                h("td", {}, h("button", { type: "button", class: "peer", onclick: () => this.app.select(p.peer.id, true) }, p.peer.label),
                  p.link.diff && p.link.diff !== "same" ? h("span", { class: "diff-tag", style: `background:${DIFF_COLORS[p.link.diff]};margin-left:4px` }, p.link.diff) : null),
                h("td", {}, p.role),
                h("td", {}, portLabels(p.ports, p.link.services)),
                h("td", { class: "num" }, fmtBytes(p.sent)),
                h("td", { class: "num" }, fmtBytes(p.received)),
                h("td", { class: "num" }, fmtUsd(p.cost))))))
        : h("p", { class: "filter-summary" }, "No traffic with the nodes shown."),
    );
    const wasHidden = panel.hidden;
    panel.hidden = false;
    if (wasHidden) this.app.renderer?.resize();
  }

  renderLinkDetails(panel, l) {
    const { index } = this.app.data;
    const s = index.byId.get(l.source);
    const t = index.byId.get(l.target);
    const row = (field, label, value) => (value === null || value === undefined || value === "" ? null : [h("dt", {}, label), h("dd", { "data-field": field }, value)]);
    fill(panel, 
      h("header", {},
        h("div", { style: "flex:1" }, h("h2", {}, `${s.label} → ${t.label}`), h("span", { class: "kind" }, "link")),
        h("button", { type: "button", class: "icon", "aria-label": "Close details", onclick: () => this.app.select(null) }, "×")),
      h("dl", {},
        row("client", "Client", h("button", { type: "button", class: "peer", onclick: () => this.app.select(s.id, true) }, s.label)),
        row("server", "Server", h("button", { type: "button", class: "peer", onclick: () => this.app.select(t.id, true) }, t.label)),
        row("server_ports", "Server ports", portLabels(l.server_ports, l.services)),
        row("service_addresses", "Service", l.service_addresses?.length ? l.service_addresses.join(", ") : null), // issue 11
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
    if (wasHidden) this.app.renderer?.resize();
  }

  updateLegend() {
    const s = this.app.state;
    const { pal } = this.app.data;
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
    if (this.app.pinned.size) parts.push(item(dot("#c9ced6", PINNED, 5, 2.5), `violet ring: pinned (${this.app.pinned.size}; double-click releases)`));
    const sc = this.app.scene.scales;
    if (sc.sizeBy === "price") {
      // Issue 12: sized by price per hour (area ∝ price); nodes without a price are smallest.
      parts.push(h("h3", { id: "legend-size" }, "Size: price per hour; width: bytes (log scale)"));
      if (Number.isFinite(sc.node[0])) {
        parts.push(item(dot("#c9ced6", "#9aa3af", Math.max(1.5, sc.nodeSize(sc.node[0]))), `node: ${fmtUsd(sc.node[0])}/h`));
        parts.push(item(dot("#c9ced6", "#9aa3af", Math.max(3, sc.nodeSize(sc.node[1]))), `node: ${fmtUsd(sc.node[1])}/h`));
      }
      if (sc.unpriced) parts.push(h("div", { class: "item", id: "legend-unpriced" }, dot("#c9ced6", "#9aa3af", 1.5), h("span", {}, `no price: smallest size (${fmtCount(sc.unpriced)} node${sc.unpriced === 1 ? "" : "s"})`)));
    } else {
      parts.push(h("h3", { id: "legend-size" }, "Size and width (log scale)"));
      if (Number.isFinite(sc.node[0])) {
        parts.push(item(dot("#c9ced6", "#9aa3af", Math.max(1.5, sc.nodeSize(sc.node[0]))), `node: ${fmtBytes(sc.node[0])} in+out`));
        parts.push(item(dot("#c9ced6", "#9aa3af", Math.max(3, sc.nodeSize(sc.node[1]))), `node: ${fmtBytes(sc.node[1])}`));
      }
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
    const f = this.app.filtered;
    const bits = [];
    if (f.suppressed) bits.push(`${fmtCount(f.suppressed)} node(s) suppressed${this.app.state.hideNodes ? "" : " (links hidden, nodes shown)"}`);
    if (f.belowMin) bits.push(`${fmtCount(f.belowMin)} link(s) under ${fmtBytes(this.app.state.minBytes)}`);
    $("#filter-summary").textContent = bits.join(" · ");
  }

  updateStatus() {
    const st = $("#status");
    if (!this.app.data || !this.app.scene) {
      st.replaceChildren();
      return;
    }
    const doc = this.app.data.doc;
    const g = this.app.scene.graph;
    const s = this.app.state;
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
    // issue 14 item 2 (v14-links): what the top-N limit hides (one click shows all), bundles.
    items.push(...this.linkStatus());
    const lay = this.app.layout;
    items.push(h("span", {}, lay.state === "running" ? "layout running…" : lay.state === "settled" ? `layout settled in ${(lay.millis / 1000).toFixed(1)} s (${lay.iterations}${lay.budgetSpent ? ` of ${lay.maxIterations} iterations: time budget reached` : " iterations"})` : lay.state === "paused" ? `layout paused after ${lay.iterations} iterations` : ""));
    items.push(h("span", { style: "margin-left:auto", id: "renderer-kind" }, this.app.renderer?.kind === "webgl" ? "WebGL" : this.app.rendererWhy ?? "Canvas 2D"));
    st.replaceChildren(...items);
  }

  // ---- issue 14 items 2 and 3 (v14-links): bundles, top N, group selection ----

  /** Status line items: links hidden by the top-N limit, bundles, the selected group. */
  linkStatus() {
    const app = this.app;
    const st = app.linkStats();
    const total = app.linkView.total;
    const out = [];
    if (st.linksHidden > 0) {
      out.push(h("span", { id: "links-hidden" }, `showing ${fmtCount(st.linksShown)} of ${fmtCount(total)} links; `,
        h("button", { type: "button", class: "linkish", id: "show-all-links", onclick: () => app.set({ top: "all" }) }, "show all")));
    } else if (app.state.top === "all" && total > TOP_N_ABOVE) {
      out.push(h("span", { id: "links-hidden" }, `all ${fmtCount(total)} links shown; `,
        h("button", { type: "button", class: "linkish", id: "show-top-links", onclick: () => app.set({ top: "auto" }) }, `show the top ${fmtCount(TOP_N)}`)));
    }
    if (st.collapsed && st.bundlesShown + st.bundlesHidden > 0) {
      const n = st.bundlesShown + st.bundlesHidden;
      out.push(h("span", { id: "bundle-status", title: "Links between groups are drawn as one bundle per pair of groups; zoom in, or click a group, to see its hosts' own links" }, `${fmtCount(st.linksBundled)} links in ${fmtCount(n)} bundle${n === 1 ? "" : "s"}${st.bundlesHidden ? ` (${fmtCount(st.bundlesShown)} biggest drawn)` : ""}`));
    }
    if (app.state.gsel && app.focus.group === app.state.gsel) {
      out.push(h("span", { id: "group-selected" }, `group ${groupLabel(app.state.gsel)} selected (Esc releases)`));
    }
    return out;
  }

  /** A bundle's tooltip: its groups, count and bytes, and its biggest links. */
  showBundleTooltip(bundle, graphPoint) {
    const { index } = this.app.data;
    const top = topLinksOf(bundle, (i) => linkBytes(index.links[i]));
    const label = (id) => index.byId.get(id)?.label ?? id;
    const lines = [
      h("div", { class: "t" }, `${groupLabel(bundle.source)} ↔ ${groupLabel(bundle.target)}`),
      h("div", { class: "m" }, `${fmtCount(bundle.count)} link${bundle.count === 1 ? "" : "s"} · ${fmtBytes(bundle.bytes)}`),
      ...top.map(({ i, bytes }) => h("div", { class: "bundle-link" }, `${label(index.links[i].source)} → ${label(index.links[i].target)} · ${fmtBytes(bytes)}`)),
    ];
    if (bundle.count > top.length) lines.push(h("div", { class: "m" }, `… and ${fmtCount(bundle.count - top.length)} more`));
    this.showTooltipAt(graphPoint, lines);
  }

  // ---- end issue 14 items 2 and 3 ----

  showProgress(done, total) {
    const p = $("#progress");
    p.hidden = false;
    p.querySelector(".bar span").style.width = `${Math.round((100 * done) / Math.max(total, 1))}%`;
    p.querySelector(".text").textContent = `Laying out ${fmtCount(this.app.scene.graph.order)} nodes… ${done}/${total || "?"}`;
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
}

function diffText(l) {
  if (l.diff === "new") return `new: ${fmtBytes(linkBytes(l))}`;
  if (l.diff === "gone") return `gone (was ${fmtBytes(l.before_bytes)})`;
  return `${l.diff === "changed" ? "changed" : "unchanged"}: ${fmtBytes(l.before_bytes)} → ${fmtBytes(linkBytes(l))}`;
}
