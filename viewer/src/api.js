// The collector's API (docs/api.md), always relative to the page's origin: the viewer is served
// by the collector at `/`, and never talks to any other host.

import { checkMap } from "./model.js";

export class ApiError extends Error {}

async function getJson(path) {
  let res;
  try {
    res = await fetch(path, { headers: { Accept: "application/json" } });
  } catch (e) {
    throw new ApiError(`cannot reach the collector (${e.message})`);
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    // A non-JSON body is reported below with the status.
  }
  if (!res.ok) throw new ApiError(body?.error ? `${body.error} (HTTP ${res.status})` : `HTTP ${res.status} for ${path}`);
  return body;
}

/** Days that have data, newest first. */
export async function fetchDays() {
  const body = await getJson("/api/v1/days");
  if (!body || !Array.isArray(body.days)) throw new ApiError("malformed /api/v1/days answer");
  return body.days;
}

const cache = new Map();

/** A map document for a `view=…&day=…` or `view=…&from=…&to=…` query (cached per query). */
export async function fetchMap(query) {
  if (cache.has(query)) return cache.get(query);
  const doc = await getJson(`/api/v1/maps?${query}`);
  const problems = checkMap(doc);
  if (problems.length && !Array.isArray(doc?.nodes)) throw new ApiError(`unreadable map: ${problems[0]}`);
  const out = { doc, problems };
  cache.set(query, out);
  // Keep the cache small: a morning session looks at a handful of maps.
  if (cache.size > 12) cache.delete(cache.keys().next().value);
  return out;
}

export function exportUrl(query, format) {
  return `/api/v1/maps/export?${query}&format=${format}`;
}
