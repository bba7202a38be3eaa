// The view state, and its round trip through the page URL (query string), so that a view can be
// shared by copying the address. Defaults are left out of the URL to keep links short.

import { TOP_MAX } from "./links.js";
import { GROUPINGS, SIZE_BY, VIEWS } from "./model.js";

export const DEFAULTS = Object.freeze({
  view: "instances",
  mode: "day", // day | range | diff
  day: null, // YYYY-MM-DD; null = newest day
  from: null, // range start, `YYYY-MM-DDTHH:MM` (UTC)
  to: null, // range end (exclusive)
  base: null, // diff: the earlier day compared with `day`
  group: "env",
  level: 1,
  split: false,
  influence: 1,
  minBytes: 0,
  hideEnv: [],
  hideArch: [],
  envRe: "",
  archRe: "",
  q: "",
  sel: null,
  color: "env", // env | archdomain | kind
  edges: "traffic", // traffic | crossenv | cost
  changes: false, // diff: hide unchanged links
  renderer: "auto", // auto (WebGL on a GPU, else canvas) | webgl | canvas
  // Issue 12 (old-tool parity).
  hideNodes: true, // suppressed nodes are hidden too (false: only their links, as the old tool)
  sizeBy: "bytes", // bytes | price
  pins: [], // [[node id, x, y], ...]: nodes dragged into place (graph coordinates)
  // Issue 14 items 2 and 3 (v14-links): bundles, top N links, group selection (links.js).
  bundle: "auto", // auto (bundles on maps with many links) | on | off
  top: "auto", // auto (the TOP_N biggest links on big maps) | all | a number of links
  gsel: null, // the selected group's key: expanded to its hosts, its neighbourhood highlighted
});

/** Longest group key kept from a URL (`gsel`). */
export const MAX_GROUP_KEY = 512;

/** Pins kept in the URL at most (the oldest go first), and the longest node id pinned. */
export const MAX_PINS = 100;
export const MAX_PIN_ID = 256;
/** Pinned coordinates are bounded and kept to two decimals. */
const PIN_BOUND = 1e7;
const round2 = (v) => Math.round(v * 100) / 100;

/** `id@x,y` (the URL form of a pin), or null when out of bounds. */
export function formatPin([id, x, y]) {
  if (typeof id !== "string" || !id || id.length > MAX_PIN_ID || !Number.isFinite(x) || !Number.isFinite(y)) return null;
  if (Math.abs(x) > PIN_BOUND || Math.abs(y) > PIN_BOUND) return null;
  return `${id}@${round2(x)},${round2(y)}`;
}

/** The pin an `id@x,y` stands for, or null when malformed (the id may hold `@` and `,`). */
export function parsePin(s) {
  // Bounded before the pattern runs: a URL can be long.
  if (typeof s !== "string" || s.length > MAX_PIN_ID + 40) return null;
  const m = /^(.+)@(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)$/s.exec(s);
  if (!m || m[1].length > MAX_PIN_ID) return null;
  const x = Number(m[2]);
  const y = Number(m[3]);
  if (Math.abs(x) > PIN_BOUND || Math.abs(y) > PIN_BOUND) return null;
  return [m[1], round2(x), round2(y)];
}

/** Adds or moves a pin (the newest last), keeping at most MAX_PINS. */
export function withPin(pins, id, x, y) {
  const p = parsePin(formatPin([id, x, y]) ?? "");
  if (!p) return pins;
  return [...pins.filter((q) => q[0] !== id), p].slice(-MAX_PINS);
}

export function withoutPin(pins, id) {
  return pins.filter((q) => q[0] !== id);
}

/**
 * What a change of each state key re-does, so that one function (`App.set`) applies any change:
 * `reload` fetches the map(s) again from the API, `rebuild` rebuilds the drawn graph from the
 * loaded map, `relayout` (with `rebuild`) re-runs the layout, `refocus` only recomputes the
 * highlight. A reload is also a new history entry (Back returns to the previous map); other
 * changes replace the current one. Every key of DEFAULTS has an entry (a unit test checks).
 */
export const EFFECTS = Object.freeze({
  view: { reload: true },
  mode: { reload: true },
  day: { reload: true },
  from: { reload: true },
  to: { reload: true },
  base: { reload: true },
  group: { rebuild: true, relayout: true },
  level: { rebuild: true, relayout: true },
  split: { rebuild: true, relayout: true },
  influence: { rebuild: true, relayout: true },
  minBytes: { rebuild: true, relayout: true },
  hideEnv: { rebuild: true, relayout: true },
  hideArch: { rebuild: true, relayout: true },
  envRe: { rebuild: true, relayout: true },
  archRe: { rebuild: true, relayout: true },
  changes: { rebuild: true, relayout: true },
  // Colours only: the positions stay.
  color: { rebuild: true },
  edges: { rebuild: true },
  q: { refocus: true },
  // Selecting refocuses by itself (it may also frame the selection) and shows the details.
  sel: {},
  // Read once, when the renderer is created.
  renderer: {},
  hideNodes: { rebuild: true, relayout: true },
  // Sizes only: the positions stay.
  sizeBy: { rebuild: true },
  // A drag has already put the node where its pin says; the layout reads pins when it starts.
  pins: {},
  // Issue 14 items 2 and 3 (v14-links): what is bundled or limited is recomputed with the
  // highlight; selecting a group refocuses by itself, as `sel`.
  bundle: { refocus: true },
  top: { refocus: true },
  gsel: {},
});

/** What a partial state change re-does: the union of the EFFECTS of its keys. */
export function effectsOf(patch) {
  const how = { reload: false, rebuild: false, relayout: false, refocus: false };
  for (const key of Object.keys(patch)) {
    // A key without an entry is a bug in the caller, not bad input: fail loudly.
    const e = EFFECTS[key];
    if (!e) throw new Error(`state key without an EFFECTS entry: ${key}`);
    for (const k of Object.keys(how)) how[k] ||= e[k] === true;
  }
  return how;
}

const DAY_RE = /^\d{4}-\d{2}-\d{2}$/;
const TIME_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$/;

const num = (s, lo, hi, dflt) => {
  if (s === null || s.trim() === "") return dflt;
  const v = Number(s);
  return Number.isFinite(v) && v >= lo && v <= hi ? v : dflt;
};
const list = (s) => (s ? s.split(",").filter(Boolean) : []);
const oneOf = (s, xs, dflt) => (xs.includes(s) ? s : dflt);

/** Reads the state from a query string; anything malformed falls back to its default. */
export function parseState(search) {
  const p = new URLSearchParams(search);
  const get = (k) => p.get(k);
  return {
    view: oneOf(get("view"), VIEWS, DEFAULTS.view),
    mode: oneOf(get("mode"), ["day", "range", "diff"], DEFAULTS.mode),
    day: DAY_RE.test(get("day") ?? "") ? get("day") : null,
    from: TIME_RE.test(get("from") ?? "") ? get("from") : null,
    to: TIME_RE.test(get("to") ?? "") ? get("to") : null,
    base: DAY_RE.test(get("base") ?? "") ? get("base") : null,
    group: oneOf(get("group"), GROUPINGS, DEFAULTS.group),
    level: Math.round(num(get("level"), 1, 32, DEFAULTS.level)),
    split: get("split") === "1",
    influence: num(get("influence"), 0, 3, DEFAULTS.influence),
    minBytes: num(get("min"), 0, Number.MAX_SAFE_INTEGER, 0),
    hideEnv: list(get("hideEnv")),
    hideArch: list(get("hideArch")),
    envRe: get("envRe") ?? "",
    archRe: get("archRe") ?? "",
    q: get("q") ?? "",
    sel: get("sel") || null,
    color: oneOf(get("color"), ["env", "archdomain", "kind"], DEFAULTS.color),
    edges: oneOf(get("edges"), ["traffic", "crossenv", "cost"], DEFAULTS.edges),
    changes: get("changes") === "1",
    renderer: oneOf(get("renderer"), ["auto", "webgl", "canvas"], DEFAULTS.renderer),
    hideNodes: get("hideNodes") !== "0",
    sizeBy: oneOf(get("size"), SIZE_BY, DEFAULTS.sizeBy),
    pins: pinsOf(p.getAll("pin")),
    // Issue 14 items 2 and 3 (v14-links).
    bundle: oneOf(get("bundle"), ["auto", "on", "off"], DEFAULTS.bundle),
    top: topOf(get("top")),
    gsel: (get("gsel") ?? "").length > 0 && get("gsel").length <= MAX_GROUP_KEY ? get("gsel") : null,
  };
}

/** `top`: "all", a whole number of links (1 to TOP_MAX), or "auto" for anything else. */
function topOf(v) {
  if (v === "all") return "all";
  if (v === null || !/^\d{1,7}$/.test(v)) return DEFAULTS.top;
  const n = Number(v);
  return n >= 1 && n <= TOP_MAX ? n : DEFAULTS.top;
}

/** Pins from the URL: malformed ones dropped, one per node (the last wins), at most MAX_PINS. */
function pinsOf(values) {
  let pins = [];
  for (const v of values.slice(-4 * MAX_PINS)) {
    const p = parsePin(v);
    if (p) pins = withPin(pins, p[0], p[1], p[2]);
  }
  return pins;
}

/** Writes the state as a query string (without the `?`), defaults omitted, in a stable order. */
export function serializeState(s) {
  const p = new URLSearchParams();
  const put = (k, v, dflt) => {
    if (v !== dflt && v !== null && v !== "" && !(Array.isArray(v) && v.length === 0)) p.set(k, Array.isArray(v) ? v.join(",") : String(v));
  };
  put("view", s.view, DEFAULTS.view);
  put("mode", s.mode, DEFAULTS.mode);
  put("day", s.day, null);
  if (s.mode === "range") {
    put("from", s.from, null);
    put("to", s.to, null);
  }
  if (s.mode === "diff") put("base", s.base, null);
  put("group", s.group, DEFAULTS.group);
  if (s.group === "archdomain") {
    put("level", s.level, DEFAULTS.level);
    put("split", s.split ? "1" : "", "");
  }
  put("influence", s.influence, DEFAULTS.influence);
  put("min", s.minBytes, 0);
  put("hideEnv", s.hideEnv, null);
  put("hideArch", s.hideArch, null);
  put("envRe", s.envRe, "");
  put("archRe", s.archRe, "");
  put("q", s.q, "");
  put("sel", s.sel, null);
  put("color", s.color, DEFAULTS.color);
  put("edges", s.edges, DEFAULTS.edges);
  if (s.mode === "diff") put("changes", s.changes ? "1" : "", "");
  put("renderer", s.renderer, DEFAULTS.renderer);
  put("hideNodes", s.hideNodes ? "" : "0", "");
  put("size", s.sizeBy, DEFAULTS.sizeBy);
  // Issue 14 items 2 and 3 (v14-links).
  put("bundle", s.bundle, DEFAULTS.bundle);
  put("top", s.top, DEFAULTS.top);
  put("gsel", s.gsel, null);
  for (const pin of (s.pins ?? []).slice(-MAX_PINS)) {
    const v = formatPin(pin);
    if (v) p.append("pin", v);
  }
  return p.toString();
}

/** The `view=…&day=…` (or `from`/`to`) part of an API request for the state's time selection. */
export function mapQuery(s, day) {
  const p = new URLSearchParams({ view: s.view });
  if (s.mode === "range" && s.from && s.to) {
    p.set("from", `${s.from}:00Z`);
    p.set("to", `${s.to}:00Z`);
  } else {
    p.set("day", day);
  }
  return p.toString();
}
