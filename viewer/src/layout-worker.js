// Web worker running the force layout off the main thread. Protocol:
//   in:  {type: "start", runId, input}  (input: see Layout in layout.js; typed arrays transferred)
//        {type: "stop", runId}
//   out: {type: "progress", runId, iterations, maxIterations, movement, positions}
//        {type: "done", runId, iterations, millis, positions, anchors}
// Progress (with positions, so the map moves while it settles) is posted about every 100 ms.

import { runLayout } from "./layout-run.js";

let current = null;

self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.type === "stop") {
    if (current && current.runId === msg.runId) current.stop();
    return;
  }
  if (msg.type === "start") {
    if (current) current.stop();
    current = runLayout(msg.input, {
      post: (out) => {
        const transfer = out.positions ? [out.positions.buffer] : [];
        self.postMessage({ ...out, runId: msg.runId }, transfer);
      },
      schedule: (fn) => setTimeout(fn, 0),
    });
    current.runId = msg.runId;
  }
};
