// What the browser test expects to see, per data set. Group keys and neighbourhoods follow from
// the documented rules and are computed from the map files; what a person reads in the panels
// (formatted bytes, prices, peers) is written out by hand for one node per data set, so that a
// formatting or wiring mistake in the viewer cannot also hide in the expectation.

const byLabel = (doc, label) => {
  const n = doc.nodes.find((x) => x.label === label);
  if (!n) throw new Error(`expectations: no node labelled ${label}`);
  return n.id;
};

function groups(doc, keyOf) {
  return [...new Set(doc.nodes.map(keyOf))].sort();
}

function archKey(n, level, split) {
  if (n.kind === "external") return "external";
  const arch = n.archdomain ? n.archdomain.split("/").slice(0, level).join("/") : "(no archdomain)";
  return split ? `arch:${arch}|${n.env ?? "(no env)"}` : `arch:${arch}`;
}

/** Hits plus their neighbours over the drawn (non-self) links. */
function neighbourhood(doc, ids) {
  const set = new Set(ids);
  for (const l of doc.links) {
    if (l.source === l.target) continue;
    if (ids.includes(l.source)) set.add(l.target);
    if (ids.includes(l.target)) set.add(l.source);
  }
  return set.size;
}

const DATASETS = {
  // viewer/test/fixtures/maps (gen-fixtures.mjs), newest day 2026-11-23.
  fixtures: {
    detect: (doc) => doc.nodes.some((n) => n.label === "etl-prod-1") && doc.nodes.some((n) => n.label === "search-prod-3"),
    build(doc) {
      const id = (l) => byLabel(doc, l);
      const searchHits = ["search-prod-1", "search-prod-2", "search-prod-3"].map(id);
      const portHits = ["db-prod-1", "db-stage-1"].map(id);
      const cidrHits = ["web-prod-1", "web-prod-2"].map(id);
      return {
        pixelNodes: ["web-prod-1", "db-prod-1", "etl-prod-1"].map(id),
        envToHide: "stage",
        archRegex: "^infra/monitoring",
        archPrefixToHide: "offline",
        searches: [
          ["search-prod", searchHits, neighbourhood(doc, searchHits)],
          [":5432", portHits, neighbourhood(doc, portHits)],
          ["10.1.1.10/31", cidrHits, neighbourhood(doc, cidrHits)],
        ],
        notNeighbourOf: { "search-prod": id("web-stage-1") },
        link: {
          source: id("etl-prod-1"),
          target: id("db-prod-1"),
          title: "etl-prod-1 → db-prod-1",
          fields: {
            client: "etl-prod-1",
            server: "db-prod-1",
            server_ports: "5432",
            bytes_to_target: "200 MB",
            bytes_to_source: "61.0 GB",
            connections: "96",
            client_processes: "python3",
            server_processes: "postgres",
            observed_by: "both agents",
            disagreement: "5.66 kB",
            cost: "$1.22 (cross-az)",
          },
        },
        details: {
          id: id("etl-prod-1"),
          label: "etl-prod-1",
          fields: {
            id: "i-0750c756b00001c39",
            env: "prod",
            archdomain: "offline/batch/etl",
            addresses: "10.1.1.16",
            instance: "i-0750c756b00001c39 · m5.xlarge · us-east-1b · spot",
            price: "$0.0712/h",
            security_groups: "sg-0e5batch",
            processes: "python3",
            bytes_in: "61.6 GB",
            bytes_out: "48.2 GB",
            connections: "5,296",
            cost: "$5.60",
          },
          peers: [
            ["db-prod-1", "client", "5432", "200 MB", "61.0 GB", "$1.22"],
            ["s3.us-east-1.amazonaws.com", "client", "443", "48.0 GB", "600 MB", "$4.37"],
          ],
        },
      };
    },
  },
  // golden/maps (the collector's golden files), newest day 2026-11-23.
  golden: {
    detect: (doc) => doc.nodes.some((n) => n.label === "db-1") && doc.nodes.some((n) => n.label === "legacy-db"),
    build(doc) {
      const id = (l) => byLabel(doc, l);
      const apiHits = ["api-1", "api-2"].map(id);
      const portHits = ["db-1"].map(id);
      return {
        pixelNodes: ["api-1", "db-1", "batch-1"].map(id),
        envToHide: "stage",
        archRegex: "^offline/",
        archPrefixToHide: "offline",
        searches: [
          ["api", apiHits, neighbourhood(doc, apiHits)],
          [":5432", portHits, neighbourhood(doc, portHits)],
          ["10.0.1.0/24", apiHits, neighbourhood(doc, apiHits)],
        ],
        notNeighbourOf: { api: id("legacy-db") },
        link: {
          source: id("api-2"),
          target: id("db-1"),
          title: "api-2 → db-1",
          fields: {
            client: "api-2",
            server: "db-1",
            server_ports: "5432/postgresql",
            bytes_to_target: "2.00 MB",
            bytes_to_source: "8.00 MB",
            connections: "3",
            client_processes: "api-server",
            server_processes: "postgres",
            observed_by: "both agents",
            disagreement: "1.00 kB",
            cost: "$0.000186 (cross-az)",
            seen: "2026-11-23 10:00:00 – 10:00:59 UTC",
          },
        },
        details: {
          id: id("db-1"),
          label: "db-1",
          fields: {
            id: "i-0d1b2c3d4e5f60721",
            env: "prod",
            archdomain: "online/storage/postgres",
            addresses: "10.0.2.21",
            instance: "i-0d1b2c3d4e5f60721 · r5.xlarge · us-east-1a · on-demand",
            price: "$0.252/h",
            security_groups: "sg-0db, sg-0mgmt",
            processes: "postgres",
            server_ports: "5432/postgresql",
            bytes_in: "3.05 MB",
            bytes_out: "12.7 MB",
            connections: "9",
            cost: "$0.000197",
            health: "2 reports · 7 probe drops (bytes may be low)",
            host: "up 10d 4h · load 1.25 / 1.50 / 1.60 (max 3.50) · 4 CPUs · memory 25% used of 33.3 GB · at 2026-11-23 14:01:00 UTC",
          },
          peers: [
            ["api-2", "server", "5432/postgresql", "8.00 MB", "2.00 MB", "$0.000186"],
            ["api-1", "server", "5432/postgresql", "4.20 MB", "1.00 MB", "$0.00"],
            ["batch-1", "server", "5432/postgresql", "500 kB", "50.0 kB", "$0.00001"],
            ["AWS DNS", "client", "53/domain", "300 B", "900 B", "$0.00"],
          ],
        },
      };
    },
  },
};

export function expectationsFor(maps, newest) {
  const doc = maps[`instances-${newest.replaceAll("-", "")}`];
  if (!doc) throw new Error(`expectations: no instances map for ${newest}`);
  const [name, ds] = Object.entries(DATASETS).find(([, d]) => d.detect(doc)) ?? [];
  if (!ds) throw new Error("expectations: these map files match no known data set; add one to test/expectations.mjs");
  const e = ds.build(doc);
  e.dataset = name;
  e.envGroups = groups(doc, (n) => (n.kind === "external" ? "external" : `env:${n.env ?? "(no env)"}`));
  e.archGroups = { 1: groups(doc, (n) => archKey(n, 1, false)), 2: groups(doc, (n) => archKey(n, 2, false)) };
  e.archSplitGroups = { 2: groups(doc, (n) => archKey(n, 2, true)) };
  return e;
}
