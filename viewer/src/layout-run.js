// Drives a Layout in slices so that it can report progress and be stopped between slices; the
// same driver runs inside the worker and, where workers are unavailable, on the main thread.

import { Layout } from "./layout.js";

const SLICE_MS = 100;
// The map must be usable within seconds on any machine: past this budget the forces stop where
// they are (a busy or slow machine gets a less refined layout, not a longer wait).
const DEFAULT_BUDGET_MS = 7000;

export function runLayout(input, { post, schedule }) {
  const start = performance.now();
  const layout = new Layout(input);
  let stopped = false;
  const tick = () => {
    if (stopped) return;
    const sliceEnd = performance.now() + SLICE_MS;
    let r = { movement: 0, settled: layout.settled() };
    while (!r.settled && performance.now() < sliceEnd) {
      if (!layout.converged() && performance.now() - start > (input.budgetMs ?? DEFAULT_BUDGET_MS)) layout.stopForces();
      r = layout.step(1);
    }
    if (r.settled) {
      post({
        type: "done",
        iterations: layout.iterations,
        maxIterations: layout.maxIterations,
        millis: performance.now() - start,
        budgetSpent: layout.forcesStopped === true,
        positions: layout.positions(),
        anchors: Float64Array.from(layout.anchors),
        regions: layout.regionList(),
      });
      return;
    }
    post({
      type: "progress",
      iterations: layout.iterations,
      maxIterations: layout.maxIterations,
      movement: r.movement,
      positions: layout.positions(),
      regions: layout.regionList(),
    });
    schedule(tick);
  };
  schedule(tick);
  return {
    stop() {
      stopped = true;
    },
  };
}
