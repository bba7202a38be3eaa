import assert from "node:assert/strict";
import { test } from "node:test";
import { DEFAULTS, EFFECTS, effectsOf, mapQuery, parseState, serializeState } from "../../src/state.js";

test("defaults: an empty URL is the default state, and serialises to nothing", () => {
  const s = parseState("");
  assert.deepEqual(s, { ...DEFAULTS, hideEnv: [], hideArch: [] });
  assert.equal(serializeState(s), "");
});

test("a full state survives the round trip", () => {
  const s = {
    ...parseState(""),
    view: "clusters", mode: "diff", day: "2026-11-23", base: "2026-11-22", group: "archdomain", level: 2, split: true,
    influence: 2.5, minBytes: 1e9, hideEnv: ["dev", "qa"], hideArch: ["infra/monitoring"], envRe: "^test", archRe: "^offline/(batch|etl)",
    q: "search-prod :9200", sel: "i-0abc", color: "kind", edges: "cost", changes: true, renderer: "canvas",
  };
  assert.deepEqual(parseState(`?${serializeState(s)}`), s);
});

test("malformed values fall back to defaults", () => {
  const s = parseState("?view=bogus&day=yesterday&level=0&influence=9&min=-5&group=foo&mode=x&from=2026-11-23");
  assert.deepEqual([s.view, s.day, s.level, s.influence, s.minBytes, s.group, s.mode, s.from], ["instances", null, 1, 1, 0, "env", "day", null]);
});

test("API query for a day or a range", () => {
  assert.equal(mapQuery({ view: "instances", mode: "day" }, "2026-11-23"), "view=instances&day=2026-11-23");
  assert.equal(mapQuery({ view: "security-groups", mode: "range", from: "2026-11-22T06:00", to: "2026-11-23T00:00" }, "2026-11-23"), "view=security-groups&from=2026-11-22T06%3A00%3A00Z&to=2026-11-23T00%3A00%3A00Z");
});

test("every state key says what its change re-does, and nothing else has an entry", () => {
  assert.deepEqual(Object.keys(EFFECTS).sort(), Object.keys(DEFAULTS).sort());
  for (const [key, e] of Object.entries(EFFECTS)) {
    assert.ok(Object.keys(e).every((k) => ["reload", "rebuild", "relayout", "refocus"].includes(k)), key);
    // A re-layout is part of a rebuild.
    if (e.relayout) assert.ok(e.rebuild, key);
  }
});

test("a change re-does the union of what its keys need", () => {
  const none = { reload: false, rebuild: false, relayout: false, refocus: false };
  assert.deepEqual(effectsOf({}), none);
  assert.deepEqual(effectsOf({ view: "clusters", sel: null }), { ...none, reload: true });
  assert.deepEqual(effectsOf({ day: "2026-11-23", base: "2026-11-22" }), { ...none, reload: true });
  assert.deepEqual(effectsOf({ from: "2026-11-22T06:00", to: "2026-11-23T00:00" }), { ...none, reload: true });
  assert.deepEqual(effectsOf({ group: "archdomain" }), { ...none, rebuild: true, relayout: true });
  assert.deepEqual(effectsOf({ hideEnv: ["dev"] }), { ...none, rebuild: true, relayout: true });
  assert.deepEqual(effectsOf({ color: "kind" }), { ...none, rebuild: true });
  assert.deepEqual(effectsOf({ color: "kind", minBytes: 1e6 }), { ...none, rebuild: true, relayout: true });
  assert.deepEqual(effectsOf({ q: "db", sel: null }), { ...none, refocus: true });
  assert.deepEqual(effectsOf({ sel: "i-0abc" }), none);
  assert.throws(() => effectsOf({ bogus: 1 }), /bogus/);
});
