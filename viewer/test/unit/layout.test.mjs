import assert from "node:assert/strict";
import { test } from "node:test";
import { Layout, linkWeights, packGroups, seededPoint } from "../../src/layout.js";

/** Two groups of `k` nodes, each a ring, one link between them. */
function twoGroups(k) {
  const ids = [];
  const group = [];
  for (let g = 0; g < 2; g++) for (let i = 0; i < k; i++) {
    ids.push(`g${g}-n${i}`);
    group.push(g);
  }
  const src = [], dst = [], bytes = [];
  for (let g = 0; g < 2; g++) for (let i = 0; i < k; i++) {
    src.push(g * k + i);
    dst.push(g * k + ((i + 1) % k));
    bytes.push(1e6 * (i + 1));
  }
  src.push(0);
  dst.push(k);
  bytes.push(1e3);
  const n = ids.length;
  return { ids, x: new Float32Array(n).fill(NaN), y: new Float32Array(n).fill(NaN), group: Int32Array.from(group), groupCount: 2, breakBefore: new Uint8Array(2), src: Uint32Array.from(src), dst: Uint32Array.from(dst), bytes: Float64Array.from(bytes), influence: 1, sizes: new Float32Array(n).fill(6), viewport: { width: 800, height: 600 } };
}

function run(input) {
  const l = new Layout(input);
  let guard = 0;
  while (!l.step(20).settled && guard++ < 1000);
  return l;
}

test("layout is deterministic and settles", () => {
  const a = run(twoGroups(20));
  const b = run(twoGroups(20));
  assert.ok(a.settled());
  assert.ok(a.iterations < a.maxIterations, `settled by convergence, not the cap (${a.iterations} iterations)`);
  assert.deepEqual(a.positions(), b.positions());
  assert.ok(a.positions().every(Number.isFinite));
});

test("grouped layouts keep groups apart", () => {
  const l = run(twoGroups(25));
  const p = l.positions();
  const centre = (g) => {
    let x = 0, y = 0;
    for (let i = g * 25; i < (g + 1) * 25; i++) {
      x += p[2 * i];
      y += p[2 * i + 1];
    }
    return [x / 25, y / 25];
  };
  const radius = (g, c) => {
    let r = 0;
    for (let i = g * 25; i < (g + 1) * 25; i++) r = Math.max(r, Math.hypot(p[2 * i] - c[0], p[2 * i + 1] - c[1]));
    return r;
  };
  const c0 = centre(0), c1 = centre(1);
  const gap = Math.hypot(c0[0] - c1[0], c0[1] - c1[1]);
  assert.ok(gap > radius(0, c0) + radius(1, c1), `groups overlap: centres ${gap.toFixed(1)} apart, radii ${radius(0, c0).toFixed(1)} and ${radius(1, c1).toFixed(1)}`);
});

test("the overlap pass leaves no two nodes overlapping at the whole-map zoom", () => {
  const input = twoGroups(15);
  input.sizes.fill(14);
  const l = run(input);
  const p = l.positions();
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (let i = 0; i < p.length; i += 2) {
    minX = Math.min(minX, p[i]); maxX = Math.max(maxX, p[i]);
    minY = Math.min(minY, p[i + 1]); maxY = Math.max(maxY, p[i + 1]);
  }
  const perPx = Math.max(maxX - minX, maxY - minY) / (600 - 80);
  let overlaps = 0;
  for (let i = 0; i < p.length / 2; i++) for (let j = i + 1; j < p.length / 2; j++) {
    if (Math.hypot(p[2 * i] - p[2 * j], p[2 * i + 1] - p[2 * j + 1]) < 2 * 14 * perPx * 0.9) overlaps++;
  }
  assert.equal(overlaps, 0);
});

test("known positions are kept as the starting point", () => {
  const input = twoGroups(10);
  input.x[3] = 123;
  input.y[3] = -45;
  const l = new Layout(input);
  const p = l.positions();
  assert.deepEqual([p[6], p[7]], [123, -45]);
});

test("traffic influence: 0 weighs every link alike, more spreads weights, mean stays 1", () => {
  const bytes = [1e3, 1e6, 1e6, 1e9];
  assert.deepEqual([...linkWeights(bytes, 0)], [1, 1, 1, 1]);
  const w1 = linkWeights(bytes, 1);
  const w2 = linkWeights(bytes, 2);
  const mean = (w) => w.reduce((a, b) => a + b, 0) / w.length;
  assert.ok(Math.abs(mean(w1) - 1) < 1e-6 && Math.abs(mean(w2) - 1) < 1e-6);
  assert.ok(w2[3] / w2[0] > w1[3] / w1[0] && w1[3] / w1[0] > 1);
});

test("group packing: rows in order, no overlaps, env bands", () => {
  const radii = [10, 10, 10, 10, 10, 10];
  const out = packGroups(radii, new Uint8Array([0, 0, 0, 1, 0, 0]), 4);
  for (let i = 0; i < 6; i++) for (let j = i + 1; j < 6; j++) {
    assert.ok(Math.hypot(out[2 * i] - out[2 * j], out[2 * i + 1] - out[2 * j + 1]) >= 20, `groups ${i} and ${j} overlap`);
  }
  assert.ok(out[2 * 3 + 1] < out[1], "a band break starts a new row below (graph y points up)");
  assert.equal(out[2 * 3 + 1], out[2 * 4 + 1], "groups after the break share their row");
  const [x, y] = seededPoint("host-1", 5, 5, 2);
  assert.ok(Math.hypot(x - 5, y - 5) <= 2);
  assert.deepEqual(seededPoint("host-1", 5, 5, 2), [x, y]);
});

test("a spent time budget ends the forces; the overlap pass still runs", () => {
  const l = new Layout(twoGroups(20));
  l.step(5);
  assert.ok(!l.settled());
  l.stopForces();
  assert.ok(l.converged());
  let guard = 0;
  while (!l.step(10).settled && guard++ < 100);
  assert.ok(l.settled());
  assert.equal(l.iterations, 5, "no force iteration after the stop");
  assert.equal(l.spreadDone, 30);
});

// Issue 14, item 1: regions.
import { packRegions, trafficOrder } from "../../src/layout.js";

test("regions: siblings a gap apart, children inside their parent, parents apart", () => {
  const radii = [30, 5, 12, 12, 40, 3, 8, 20];
  const parent = Int32Array.from([0, 0, 1, 1, 1, -1, 0, 1]);
  const traffic = new Map([[0, new Map([[5, 10]])], [5, new Map([[0, 10]])]]);
  const gap = 4;
  const { groups, parents } = packRegions(radii, parent, 2, traffic, gap);
  const dist = (a, b) => Math.hypot(a.x - b.x, a.y - b.y);
  for (let i = 0; i < groups.length; i++) {
    assert.equal(groups[i].r, radii[i]);
    for (let j = i + 1; j < groups.length; j++) assert.ok(dist(groups[i], groups[j]) >= radii[i] + radii[j] + gap - 1e-9, `groups ${i} and ${j} closer than the gap`);
    if (parent[i] >= 0) {
      const p = parents[parent[i]];
      assert.ok(dist(groups[i], p) + radii[i] + gap <= p.r + 1e-9, `group ${i} not inside its parent`);
    } else for (const p of parents) assert.ok(dist(groups[i], p) >= radii[i] + p.r + gap - 1e-9, `group ${i} overlaps a parent`);
  }
  assert.ok(dist(parents[0], parents[1]) >= parents[0].r + parents[1].r + gap - 1e-9, "parents overlap");
});

test("regions: the packing order follows traffic (the heaviest peer of what is placed comes next)", () => {
  const size = { 0: 10, 1: 9, 2: 8, 3: 7 };
  const t = new Map([[0, new Map([[3, 5], [2, 1]])], [3, new Map([[0, 5], [1, 2]])], [2, new Map([[0, 1]])], [1, new Map([[3, 2]])]]);
  assert.deepEqual(trafficOrder([0, 1, 2, 3], size, t), [0, 3, 1, 2]);
  assert.deepEqual(trafficOrder([0, 1, 2, 3], size, new Map()), [0, 1, 2, 3]);
});

test("regions: every node ends inside its group's region, regions apart; the old row packing stays selectable", () => {
  const input = twoGroups(30);
  const l = run(input);
  assert.equal(l.packing, "regions");
  const R = l.regionList();
  const p = l.positions();
  for (let i = 0; i < 60; i++) {
    const g = input.group[i];
    assert.ok(Math.hypot(p[2 * i] - R[3 * g], p[2 * i + 1] - R[3 * g + 1]) < R[3 * g + 2], `node ${i} outside its region`);
  }
  assert.ok(Math.hypot(R[0] - R[3], R[1] - R[4]) > R[2] + R[5]);
  const old = run({ ...twoGroups(30), packing: "rows" });
  assert.equal(old.regionList(), null);
  assert.ok(old.repackAt.size > 0);
});

test("a corrupt map's NaN or negative bytes neither stall the group order nor poison the weights", () => {
  const size = [4, 3, 2, 1];
  const t = new Map([
    [0, new Map([[1, NaN], [2, -5]])],
    [1, new Map([[0, NaN], [3, Infinity]])],
    [2, new Map([[0, -5]])],
    [3, new Map([[1, Infinity]])],
  ]);
  // Every weight counts as none: plain size order, each item once (the loop used to push -1
  // forever once every score was NaN).
  assert.deepEqual(trafficOrder([0, 1, 2, 3], size, t), [0, 1, 2, 3]);
  const w = linkWeights([NaN, -1, 10, 10], 1);
  assert.ok([...w].every(Number.isFinite), `${[...w]}`);
  assert.equal(w[0], w[1]);
  assert.ok(w[2] > w[0]);
});
