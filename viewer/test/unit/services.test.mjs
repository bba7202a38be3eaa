// Issue 12 item 4: ports shown with their service names, and nodes found by them.
import assert from "node:assert/strict";
import { test } from "node:test";
import { indexMap, searchNodes } from "../../src/model.js";

function doc() {
  const node = (id, label, server_ports) => ({ id, label, kind: "host", env: null, archdomain: null, addresses: [], instance_id: null, instance_type: null, availability_zone: null, lifecycle: null, price_per_hour: null, security_groups: [], processes: [], server_ports, members: 1, bytes_in: 0, bytes_out: 0, connections: 0, cost_usd: 0 });
  const link = (source, target, server_ports, services) => ({ source, target, bytes_to_target: 1, bytes_to_source: 1, connections: 1, server_ports, ...(services ? { services } : {}), client_processes: [], server_processes: [], observed_by: "both", disagreement_bytes: 0, cost_usd: 0, cost_kind: "same_az" });
  return {
    schema: "trafficmap.map/v1",
    nodes: [node("a", "api-1", []), node("db", "db-1", [5432, 49999]), node("old", "legacy-1", [6379])],
    links: [link("a", "db", [5432, 49999], ["postgresql", ""]), link("a", "old", [6379])],
  };
}

test("a search for a service name finds the nodes serving it", () => {
  const index = indexMap(doc());
  const all = index.nodes.map((n) => n.id);
  assert.deepEqual(searchNodes(index, "postgres", all), ["db"]);
  assert.deepEqual(searchNodes(index, "POSTGRESQL", all), ["db"]);
  // A map without names (an older collector) finds nothing by name; ports still work.
  assert.deepEqual(searchNodes(index, "redis", all), []);
  assert.deepEqual(searchNodes(index, ":6379", all), ["old"]);
});
