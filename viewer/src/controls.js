// The controls: the time and view pickers, layout and filter settings, search, keyboard and
// help. A control changes the state through `app.set(patch)`, which redoes what the EFFECTS
// table in state.js says for the keys it changed; `sync` writes the state back into the controls.

import { $, h } from "./dom.js";
import { addDays, archTree, compileRegex, envList, fmtBytes, maxArchDepth, parseBytes } from "./model.js";
import { KIND_NAMES } from "./panels.js";
import { parseState } from "./state.js";

const same = (v) => v;

/**
 * The controls that hold one state key as it is: the element, the key, the element property that
 * holds it (`value` unless said) and how to read it. `bind` and `sync` both go through this table.
 * The others need more than that: a day keeps the diff's base apart, a range is applied as a whole,
 * a threshold or a regular expression is checked first, and group is a set of radio buttons.
 */
const FIELDS = [
  { el: "#mode", key: "mode" },
  { el: "#base", key: "base" },
  { el: "#level", key: "level", read: Number },
  { el: "#split", key: "split", prop: "checked" },
  { el: "#influence", key: "influence", read: Number },
  { el: "#color", key: "color" },
  { el: "#edges", key: "edges" },
  { el: "#changes", key: "changes", prop: "checked" },
  { el: "#size-by", key: "sizeBy" },
  { el: "#hide-nodes", key: "hideNodes", prop: "checked" },
];

export class Controls {
  constructor(app) {
    this.app = app;
    /** The search result picked with the arrow keys (-1: none). */
    this.activeResult = -1;
  }

  fillDayPickers() {
    const s = this.app.state;
    if (!s.day || !this.app.days.includes(s.day)) s.day = this.app.days[0];
    if (!s.base || !this.app.days.includes(s.base) || s.base === s.day) s.base = this.app.days[this.app.days.indexOf(s.day) + 1] ?? this.app.days.find((d) => d !== s.day) ?? s.day;
    for (const sel of [$("#day"), $("#base")]) {
      sel.replaceChildren(...this.app.days.map((d) => h("option", { value: d }, d)));
    }
    if (!s.from) s.from = `${s.day}T00:00`;
    if (!s.to) s.to = `${addDays(s.day, 1)}T00:00`;
    this.sync();
    this.app.writeUrl(false);
  }

  /** Binds every control once; each change goes through `app.set`. */
  bind() {
    document.querySelectorAll(".views button").forEach((b) => b.addEventListener("click", () => this.setView(b.dataset.view)));
    for (const f of FIELDS) $(f.el).addEventListener("change", (e) => this.app.set({ [f.key]: (f.read ?? same)(e.target[f.prop ?? "value"]) }));
    $("#day").addEventListener("change", (e) => this.setDay(e.target.value));
    $("#prev-day").addEventListener("click", () => this.stepDay(+1));
    $("#next-day").addEventListener("click", () => this.stepDay(-1));
    $("#apply-range").addEventListener("click", () => {
      const from = $("#from").value;
      const to = $("#to").value;
      if (!from || !to || from >= to) {
        this.app.panels.showBanner("The range needs a start before its end.", "info");
        return;
      }
      this.app.set({ from, to });
    });
    document.querySelectorAll('input[name="group"]').forEach((r) => r.addEventListener("change", () => this.app.set({ group: r.value })));
    $("#influence").addEventListener("input", (e) => ($("#influence-out").textContent = `${Number(e.target.value).toFixed(2)}×`));
    $("#min-bytes").addEventListener("change", (e) => {
      const v = e.target.value.trim() === "" ? 0 : parseBytes(e.target.value);
      e.target.setAttribute("aria-invalid", v === null ? "true" : "false");
      if (v !== null) this.app.set({ minBytes: v });
    });
    for (const [id, key] of [["#env-re", "envRe"], ["#arch-re", "archRe"]]) {
      $(id).addEventListener("change", (e) => {
        const { error } = compileRegex(e.target.value);
        e.target.setAttribute("aria-invalid", error ? "true" : "false");
        e.target.title = error ? `Invalid regular expression: ${error}` : "";
        if (!error) this.app.set({ [key]: e.target.value });
      });
    }
    const search = $("#search");
    let timer = 0;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        this.activeResult = -1;
        this.app.linkSel = null;
        this.app.set({ q: search.value.trim(), sel: null });
        this.app.panels.renderDetails();
      }, 120);
    });
    search.addEventListener("keydown", (e) => this.onSearchKey(e));
    search.addEventListener("blur", () => setTimeout(() => ($("#search-results").hidden = true), 150));
    search.addEventListener("focus", () => this.updateSearchResults());
    $("#zoom-in").addEventListener("click", () => this.app.camera?.zoom(1.5));
    $("#zoom-out").addEventListener("click", () => this.app.camera?.zoom(1 / 1.5));
    $("#zoom-reset").addEventListener("click", () => this.app.camera?.reset());
    $("#pause-layout").addEventListener("click", () => this.app.toggleLayout());
    $("#preset").addEventListener("change", (e) => this.applyPreset(e.target.value));
    $("#export-png").addEventListener("click", () => this.app.exports.exportImage("png"));
    $("#export-svg").addEventListener("click", () => this.app.exports.exportImage("svg"));
    $("#copy-link").addEventListener("click", () => this.app.exports.copyLink());
    $("#help-button").addEventListener("click", () => this.toggleHelp(true));
    $("#help-close").addEventListener("click", () => this.toggleHelp(false));
    document.addEventListener("keydown", (e) => this.onKey(e));
    window.addEventListener("resize", () => this.app.renderer?.resize());
    window.addEventListener("popstate", () => {
      const prev = this.app.state;
      this.app.state = parseState(location.search);
      if (!this.app.state.day) this.app.state.day = prev.day;
      this.sync();
      this.app.load();
    });
  }

  /** Puts the state into the controls (after a URL load, popstate or a change elsewhere). */
  sync() {
    const s = this.app.state;
    document.body.classList.toggle("mode-diff", s.mode === "diff");
    document.body.classList.toggle("mode-range", s.mode === "range");
    document.body.classList.toggle("group-arch", s.group === "archdomain");
    document.querySelectorAll(".views button").forEach((b) => b.setAttribute("aria-checked", String(b.dataset.view === s.view)));
    for (const f of FIELDS) {
      const v = s[f.key];
      // A day not chosen yet (null) leaves its picker as it is.
      if (v !== null) $(f.el)[f.prop ?? "value"] = f.prop === "checked" ? v : String(v);
    }
    if (s.day) $("#day").value = s.day;
    if (s.from) $("#from").value = s.from;
    if (s.to) $("#to").value = s.to;
    document.querySelectorAll('input[name="group"]').forEach((r) => (r.checked = r.value === s.group));
    document.querySelector(".arch-only").hidden = s.group !== "archdomain";
    $("#influence-out").textContent = `${s.influence.toFixed(2)}×`;
    const minEl = $("#min-bytes");
    if (document.activeElement !== minEl) minEl.value = s.minBytes ? fmtBytes(s.minBytes) : "";
    $("#env-re").value = s.envRe;
    $("#arch-re").value = s.archRe;
    const search = $("#search");
    if (document.activeElement !== search) search.value = s.q;
    $("#preset").value = String(this.presetIndex());
    this.app.exports.syncLinks();
    this.syncLayoutButton();
  }

  /** Pause while the layout runs; Resume when paused or settled (runs it again from there). */
  syncLayoutButton() {
    const b = $("#pause-layout");
    b.disabled = !this.app.scene;
    b.textContent = this.app.layout.state === "running" ? "Pause layout" : "Resume layout";
  }

  presets() {
    return this.app.viewerConfig?.suppression_presets ?? [];
  }

  /** The preset the current suppressions are (its index), or "" for none of them. */
  presetIndex() {
    const s = this.app.state;
    const i = this.presets().findIndex((p) => p.env === s.envRe && p.archdomain === s.archRe && p.hide_nodes === s.hideNodes);
    return i < 0 ? "" : i;
  }

  /** The collector's suppression presets in the Preset select (hidden when it has none). */
  fillPresets() {
    const presets = this.presets();
    $("#preset").replaceChildren(
      h("option", { value: "" }, "—"),
      ...presets.map((p, i) => {
        // A preset the viewer would refuse is shown, but cannot be picked.
        const bad = compileRegex(p.env).error ?? compileRegex(p.archdomain).error;
        return h("option", { value: String(i), disabled: !!bad, title: bad ? `Invalid: ${bad}` : [p.env && `env ~ ${p.env}`, p.archdomain && `archdomain ~ ${p.archdomain}`, p.hide_nodes ? "nodes hidden" : "links hidden"].filter(Boolean).join(" · ") }, p.name);
      }),
    );
    $("#preset-row").hidden = presets.length === 0;
    $("#preset").value = String(this.presetIndex());
  }

  /** Applies a preset's suppressions (envs, archdomains, hide nodes); "" clears them. */
  applyPreset(value) {
    const p = value === "" ? { env: "", archdomain: "", hide_nodes: true } : this.presets()[Number(value)];
    if (!p) return;
    this.app.set({ envRe: p.env, archRe: p.archdomain, hideNodes: p.hide_nodes });
  }

  setView(view) {
    if (view === this.app.state.view) return;
    this.app.linkSel = null;
    this.app.set({ view, sel: null });
  }

  setDay(day) {
    const patch = { day };
    if (this.app.state.mode === "diff" && this.app.state.base === day) patch.base = this.app.days[this.app.days.indexOf(day) + 1] ?? this.app.state.base;
    this.app.set(patch);
  }

  /** +1 = one day older, -1 = one day newer (days are listed newest first). */
  stepDay(delta) {
    const i = this.app.days.indexOf(this.app.state.day) + delta;
    if (i >= 0 && i < this.app.days.length) this.setDay(this.app.days[i]);
  }

  fillFilterLists() {
    const { doc } = this.app.data;
    const s = this.app.state;
    const envs = envList(doc.nodes);
    const hiddenEnvs = new Set(s.hideEnv);
    $("#env-list").replaceChildren(
      ...envs.map(({ env, count }) =>
        h("li", {}, h("label", {},
          h("input", { type: "checkbox", "data-env": env, checked: !hiddenEnvs.has(env), onchange: (e) => this.toggleList("hideEnv", env, !e.target.checked) }),
          h("span", { class: "swatch", style: `background:${this.app.data.pal.env.get(env)}` }),
          h("span", { class: "name" }, env),
          h("span", { class: "count" }, count))),
      ),
    );
    if (envs.length === 0) $("#env-list").replaceChildren(h("li", { class: "count" }, "no envs in this map"));
    const hiddenArchs = new Set(s.hideArch);
    const tree = archTree(doc.nodes);
    $("#arch-list").replaceChildren(
      ...tree.map(({ prefix, count, depth }) =>
        h("li", { style: `padding-left:${depth * 14}px` }, h("label", { title: prefix },
          h("input", { type: "checkbox", "data-arch": prefix, checked: !hiddenArchs.has(prefix), onchange: (e) => this.toggleList("hideArch", prefix, !e.target.checked) }),
          h("span", { class: "name" }, prefix.split("/").pop()),
          h("span", { class: "count" }, count))),
      ),
    );
    // A prefix that is suppressed greys out everything under it.
    for (const li of $("#arch-list").children) {
      const p = li.querySelector("input").dataset.arch;
      const covered = s.hideArch.some((x) => p !== x && p.startsWith(`${x}/`));
      li.querySelector("input").disabled = covered;
      li.style.opacity = covered ? "0.5" : "";
    }
    const depth = maxArchDepth(doc.nodes);
    $("#level").replaceChildren(...Array.from({ length: depth }, (_, i) => h("option", { value: i + 1 }, `${i + 1} (${["top", "second", "third", "fourth"][i] ?? `${i + 1}th`})`)));
    if (s.level > depth) s.level = depth;
    $("#level").value = String(s.level);
  }

  toggleList(key, value, hide) {
    const set = new Set(this.app.state[key]);
    if (hide) set.add(value);
    else set.delete(value);
    this.app.set({ [key]: [...set].sort() });
    this.fillFilterLists();
  }

  onSearchKey(e) {
    const list = $("#search-results");
    const n = Math.min(this.app.searchHits.length, 50);
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      if (!n) return;
      this.activeResult = (this.activeResult + (e.key === "ArrowDown" ? 1 : -1) + n) % n;
      this.updateSearchResults();
      list.children[this.activeResult]?.scrollIntoView({ block: "nearest" });
    } else if (e.key === "Enter") {
      e.preventDefault();
      if (this.activeResult >= 0 && this.app.searchHits[this.activeResult]) {
        this.app.select(this.app.searchHits[this.activeResult], true);
        list.hidden = true;
      } else if (n) {
        this.app.refocus(true);
        list.hidden = true;
      }
    } else if (e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      if (e.target.value) {
        e.target.value = "";
        this.app.set({ q: "", sel: null });
        this.app.panels.renderDetails();
      } else {
        e.target.blur();
        $("#map").focus();
      }
    }
  }

  updateSearchResults() {
    const list = $("#search-results");
    const input = $("#search");
    if (!this.app.state.q || document.activeElement !== input) {
      list.hidden = true;
      return;
    }
    const { index } = this.app.data;
    const hits = this.app.searchHits.slice(0, 50);
    list.replaceChildren(
      ...(hits.length
        ? hits.map((id, i) => {
            const n = index.byId.get(id);
            const meta = [n.env, n.archdomain, n.addresses[0]].filter(Boolean).join(" · ");
            return h("li", { role: "option", id: `result-${i}`, "aria-selected": String(i === this.activeResult), onmousedown: (e) => { e.preventDefault(); this.app.select(id, true); list.hidden = true; } },
              h("span", {}, n.label), h("span", { class: "meta" }, meta || KIND_NAMES[n.kind]));
          })
        : [h("li", { class: "meta" }, "no match among the nodes shown")]),
    );
    if (this.app.searchHits.length > 50) list.append(h("li", { class: "meta" }, `… ${this.app.searchHits.length - 50} more (all highlighted on the map)`));
    input.setAttribute("aria-activedescendant", this.activeResult >= 0 ? `result-${this.activeResult}` : "");
    list.hidden = false;
  }

  onKey(e) {
    const t = e.target;
    const typing = t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement;
    if (e.key === "Escape") {
      if (!$("#help").hidden) return this.toggleHelp(false);
      if (typing) return;
      if (this.app.state.sel || this.app.state.gsel || this.app.linkSel) return this.app.select(null);
      if (this.app.state.q) {
        $("#search").value = "";
        this.app.set({ q: "" });
        this.app.panels.renderDetails();
      }
      return;
    }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    const r = this.app.camera;
    const onMap = t === $("#map") || t === document.body;
    switch (e.key) {
      case "/":
        e.preventDefault();
        $("#search").focus();
        $("#search").select();
        break;
      case "+":
      case "=":
        r?.zoom(1.5);
        break;
      case "-":
      case "_":
        r?.zoom(1 / 1.5);
        break;
      case "0":
        r?.reset();
        break;
      case "f":
        if (this.app.focus.focus) this.app.focusNodes([...this.app.focus.focus]);
        break;
      case "[":
        this.stepDay(+1);
        break;
      case "]":
        this.stepDay(-1);
        break;
      case "1":
      case "2":
      case "3":
      case "4": // issue 11: workloads
        this.setView(["instances", "clusters", "security-groups", "workloads"][Number(e.key) - 1]);
        break;
      case "g": {
        const order = ["none", "env", "archdomain", "namespace"];
        this.app.set({ group: order[(order.indexOf(this.app.state.group) + 1) % order.length] });
        break;
      }
      case "?":
        this.toggleHelp(true);
        break;
      case "p":
        this.app.toggleLayout();
        break;
      case "ArrowLeft":
      case "ArrowRight":
      case "ArrowUp":
      case "ArrowDown": {
        if (!onMap) return;
        e.preventDefault();
        const step = 80;
        const d = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[e.key];
        r?.panBy(d[0], d[1], 120);
        break;
      }
      default:
    }
  }

  toggleHelp(show) {
    $("#help").hidden = !show;
    if (show) $("#help-close").focus();
    else $("#map").focus();
  }
}
