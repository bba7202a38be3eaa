// Issue 14 items 2 and 3 (v14-links): the pure bundling and top-N functions of links.js.
import assert from "node:assert/strict";
import { test } from "node:test";
import { BUNDLE_AUTO_LINKS, BUNDLE_MAX_WIDTH, TOP_MAX, TOP_N, TOP_N_ABOVE, bundleWidth, bundlingOn, buildBundles, linkLimit, pointInPolygon, segmentDistance, topHidden, topLinksOf } from "../../src/links.js";
import { synthMap } from "../../bench/synth.mjs";
import { groupKey, linkBytes } from "../../src/model.js";
import { DEFAULTS, parseState, serializeState } from "../../src/state.js";

const groupOf = new Map([["a1", "env:prod"], ["a2", "env:prod"], ["b1", "env:stage"], ["c1", "external"]]);
const L = (i, source, target, bytes) => ({ i, source, target, bytes });

test("bundles: one per pair of groups (both directions), exact counts and summed bytes; inner links faded", () => {
  const links = [L(0, "a1", "b1", 100), L(1, "b1", "a2", 50), L(2, "a1", "a2", 7), L(3, "a1", "c1", 3), L(4, "u", "a1", 9), L(5, "a1", "a1", 1)];
  const { bundles, bundled, faded } = buildBundles(links, groupOf, new Set());
  assert.deepEqual(
    bundles.map(({ source, target, count, bytes, links: ls }) => ({ source, target, count, bytes, links: ls })),
    [
      { source: "env:prod", target: "env:stage", count: 2, bytes: 150, links: [0, 1] },
      { source: "env:prod", target: "external", count: 1, bytes: 3, links: [3] },
    ],
  );
  assert.deepEqual([...bundled].sort(), [0, 1, 3]);
  assert.deepEqual([...faded], [2]);
});

test("bundles: an expanded group keeps its own links, the other groups stay bundled", () => {
  const links = [L(0, "a1", "b1", 100), L(1, "b1", "c1", 50), L(2, "a1", "a2", 7)];
  const { bundles, bundled, faded } = buildBundles(links, groupOf, new Set(["env:prod"]));
  assert.deepEqual(bundles.map((b) => [b.source, b.target, b.count, b.bytes]), [["env:stage", "external", 1, 50]]);
  assert.deepEqual([...bundled], [1]);
  assert.deepEqual([...faded], []);
});

test("bundle bytes saturate instead of overflowing", () => {
  const big = Number.MAX_SAFE_INTEGER - 1;
  const { bundles } = buildBundles([L(0, "a1", "b1", big), L(1, "a2", "b1", big)], groupOf, new Set());
  assert.equal(bundles[0].bytes, Number.MAX_SAFE_INTEGER);
  assert.equal(bundles[0].count, 2);
});

test("bundles of the synthetic 600/3,000 fleet equal the sums of their links", () => {
  const doc = synthMap(600, 3000, 1);
  const go = new Map(doc.nodes.map((n) => [n.id, groupKey(n, { mode: "env" })]));
  const links = doc.links.map((l, i) => L(i, l.source, l.target, linkBytes(l)));
  const { bundles, bundled, faded } = buildBundles(links, go, new Set());
  // Written out independently: per unordered pair of distinct groups.
  const want = new Map();
  let inner = 0;
  for (const l of doc.links) {
    const a = go.get(l.source);
    const b = go.get(l.target);
    if (a === b) {
      inner++;
      continue;
    }
    const k = [a, b].sort().join("|");
    const w = want.get(k) ?? { count: 0, bytes: 0 };
    w.count++;
    w.bytes += l.bytes_to_target + l.bytes_to_source;
    want.set(k, w);
  }
  assert.equal(bundles.length, want.size);
  for (const b of bundles) assert.deepEqual({ count: b.count, bytes: b.bytes }, want.get([b.source, b.target].sort().join("|")));
  assert.equal(bundled.size + faded.size, doc.links.length);
  assert.equal(faded.size, inner);
});

test("top N: the N biggest links stay, ties by order; null keeps everything", () => {
  const items = [{ key: "0", bytes: 5 }, { key: "1", bytes: 9 }, { key: "2", bytes: 5 }, { key: "3", bytes: 1 }];
  assert.deepEqual([...topHidden(items, 2)].sort(), ["2", "3"]);
  assert.deepEqual([...topHidden(items, 3)], ["3"]);
  assert.equal(topHidden(items, null).size, 0);
  assert.equal(topHidden(items, 4).size, 0);
  const many = Array.from({ length: 3000 }, (_, i) => ({ key: String(i), bytes: (i * 7919) % 1000 }));
  assert.equal(topHidden(many, TOP_N).size, 3000 - TOP_N);
  // Byte counts that are not numbers count as 0.
  assert.deepEqual([...topHidden([{ key: "a", bytes: NaN }, { key: "b", bytes: 3 }, { key: "c", bytes: Infinity }], 1)].sort(), ["a", "c"]);
  // Ties at the cut: the earliest stay.
  assert.deepEqual([...topHidden(["0", "1", "2", "3", "4"].map((key) => ({ key, bytes: key === "4" ? 9 : 1 })), 3)].sort(), ["2", "3"]);
});

test("link limit: auto above TOP_N_ABOVE, all, or a number (bounded)", () => {
  assert.equal(linkLimit(TOP_N_ABOVE, "auto"), null);
  assert.equal(linkLimit(TOP_N_ABOVE + 1, "auto"), TOP_N);
  assert.equal(linkLimit(50000, "all"), null);
  assert.equal(linkLimit(11, 5), 5);
  assert.equal(linkLimit(11, 0), null);
  assert.equal(linkLimit(11, TOP_MAX * 10), TOP_MAX);
});

test("bundling: auto above BUNDLE_AUTO_LINKS with a grouping, on, off", () => {
  assert.equal(bundlingOn("auto", true, BUNDLE_AUTO_LINKS), false);
  assert.equal(bundlingOn("auto", true, BUNDLE_AUTO_LINKS + 1), true);
  assert.equal(bundlingOn("auto", false, 1e6), false);
  assert.equal(bundlingOn("on", true, 2), true);
  assert.equal(bundlingOn("on", false, 2), false);
  assert.equal(bundlingOn("off", true, 1e6), false);
});

test("bundle width: the links' scale, continued past its top, capped", () => {
  const sc = { lo: 10, hi: 1000, min: 1, max: 7, density: 1 };
  assert.equal(bundleWidth(10, sc), 1);
  assert.equal(bundleWidth(1000, sc), 7);
  assert.equal(bundleWidth(100000, sc), 13);
  assert.equal(bundleWidth(1e15, sc), BUNDLE_MAX_WIDTH);
  assert.equal(bundleWidth(1000, { ...sc, density: 0.5 }), 3.5);
});

test("a bundle's biggest links, at most ten", () => {
  const bytes = [5, 50, 7, 50, ...Array(20).fill(1)];
  const top = topLinksOf({ links: bytes.map((_, i) => i) }, (i) => bytes[i]);
  assert.equal(top.length, 10);
  assert.deepEqual(top.slice(0, 4), [{ i: 1, bytes: 50 }, { i: 3, bytes: 50 }, { i: 2, bytes: 7 }, { i: 0, bytes: 5 }]);
});

test("geometry: segment distance, point in polygon", () => {
  assert.equal(segmentDistance({ x: 5, y: 3 }, { x: 0, y: 0 }, { x: 10, y: 0 }), 3);
  assert.equal(segmentDistance({ x: -4, y: 3 }, { x: 0, y: 0 }, { x: 10, y: 0 }), 5);
  const sq = [[0, 0], [10, 0], [10, 10], [0, 10]];
  assert.equal(pointInPolygon({ x: 5, y: 5 }, sq), true);
  assert.equal(pointInPolygon({ x: 11, y: 5 }, sq), false);
});

test("state: bundle, top and gsel go through the URL; bad values fall back", () => {
  const s = { ...parseState(""), bundle: "on", top: 500, gsel: "arch:online/api|prod" };
  assert.deepEqual(parseState(`?${serializeState(s)}`), s);
  assert.equal(parseState("?top=all").top, "all");
  assert.deepEqual([DEFAULTS.bundle, DEFAULTS.top, DEFAULTS.gsel], ["auto", "auto", null]);
  const bad = parseState(`?bundle=maybe&top=-3&gsel=${"x".repeat(600)}`);
  assert.deepEqual([bad.bundle, bad.top, bad.gsel], ["auto", "auto", null]);
  assert.equal(parseState("?top=99999999").top, "auto");
  assert.equal(parseState("?top=0").top, "auto");
});
