// A synthetic fleet map for benchmarks: `nodes` hosts in 40 archdomain x env clusters,
// `links` links, mostly inside a cluster or to a few "upstream" clusters, byte counts spread
// over six orders of magnitude. Deterministic (seeded), and valid against map.rs.
export function synthMap(nodeCount = 5000, linkCount = 50000, seed = 1) {
  let s = seed >>> 0;
  const rnd = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const envs = ["prod", "stage", "qa", "dev"];
  const tops = ["online", "offline", "infra", "data"];
  const mids = ["frontend", "midtier", "backend", "batch", "stream"];
  const leaves = ["web", "search", "cart", "db", "cache", "queue", "etl", "ml"];
  const clusters = [];
  for (let c = 0; c < 40; c++) {
    clusters.push({
      env: envs[c % 4 === 3 ? 1 + (c % 3) : 0],
      arch: `${tops[c % 4]}/${mids[(c >> 2) % 5]}/${leaves[c % 8]}`,
    });
  }
  const nodes = [];
  const of = [];
  for (let i = 0; i < nodeCount; i++) {
    const c = Math.floor(Math.pow(rnd(), 1.6) * 40);
    of.push(c);
    const external = i % 97 === 0;
    nodes.push({
      id: external ? `ip:198.51.${i >> 8}.${i & 255}` : `i-${(0x10000000 + i).toString(16)}`,
      label: external ? `peer-${i}.example.net` : `${clusters[c].arch.split("/")[2]}-${clusters[c].env}-${i}`,
      kind: external ? "external" : i % 13 === 0 ? "unmonitored" : "host",
      env: external ? null : clusters[c].env,
      archdomain: external ? null : clusters[c].arch,
      addresses: [`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`],
      instance_id: external ? null : `i-${(0x10000000 + i).toString(16)}`,
      instance_type: external ? null : "m5.large",
      availability_zone: external ? null : "us-east-1a",
      lifecycle: external ? null : "on-demand",
      price_per_hour: external ? null : 0.096,
      security_groups: [],
      processes: [],
      server_ports: [],
      members: 1,
      bytes_in: 0,
      bytes_out: 0,
      connections: 0,
      cost_usd: 0,
    });
  }
  const byCluster = Array.from({ length: 40 }, () => []);
  of.forEach((c, i) => byCluster[c].push(i));
  const seen = new Set();
  const links = [];
  let guard = 0;
  while (links.length < linkCount && guard++ < linkCount * 20) {
    const a = Math.floor(rnd() * nodeCount);
    let b;
    if (rnd() < 0.7) {
      const peers = byCluster[of[a]];
      b = peers[Math.floor(rnd() * peers.length)];
    } else {
      const c = (of[a] + 1 + Math.floor(rnd() * 3)) % 40;
      const peers = byCluster[c].length ? byCluster[c] : byCluster[0];
      b = peers[Math.floor(rnd() * peers.length)];
    }
    if (a === b) continue;
    const key = a * nodeCount + b;
    if (seen.has(key)) continue;
    seen.add(key);
    const up = Math.round(Math.pow(10, 3 + rnd() * 6));
    const down = Math.round(Math.pow(10, 3 + rnd() * 6));
    links.push({
      source: nodes[a].id, target: nodes[b].id, bytes_to_target: up, bytes_to_source: down,
      connections: 1 + Math.floor(rnd() * 100), server_ports: [443], client_processes: [],
      server_processes: [], observed_by: "both", disagreement_bytes: 0, cost_usd: 0,
      cost_kind: "same_az",
    });
    nodes[a].bytes_out += up; nodes[a].bytes_in += down;
    nodes[b].bytes_in += up; nodes[b].bytes_out += down;
  }
  let bytes = 0, conns = 0;
  for (const l of links) { bytes += l.bytes_to_target + l.bytes_to_source; conns += l.connections; }
  return {
    schema: "trafficmap.map/v1", view: "instances", from: "2026-11-23T00:00:00Z", to: "2026-11-24T00:00:00Z",
    generated_at: "2026-11-24T00:05:00Z", nodes, links,
    totals: { nodes: nodes.length, links: links.length, bytes, connections: conns, cost_usd: 0 },
  };
}
