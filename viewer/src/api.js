// The collector's API (docs/api.md), always relative to the page's origin: the viewer is served
// by the collector at `/`, and never talks to any other host.

import { checkMap } from "./model.js";

export class ApiError extends Error {}

/** The collector wants a read token (401): the viewer asks for one. */
export class AuthRequired extends ApiError {}

// The read token lives in sessionStorage: this tab only, gone when it closes, never in the URL.
const TOKEN_KEY = "trafficmap.readToken";

export function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null; // storage disabled: the token is asked again
  }
}

export function setReadToken(token) {
  cache.clear();
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // Storage disabled: nothing is kept.
  }
}

export function forgetReadToken() {
  cache.clear();
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // nothing kept
  }
}

/** Fetches an API path with the read token, if there is one (`body`: a JSON POST). */
async function apiFetch(path, accept, body = undefined) {
  const token = readToken();
  const headers = { Accept: accept };
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { headers };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    return await fetch(path, init);
  } catch (e) {
    throw new ApiError(`cannot reach the collector (${e.message})`);
  }
}

async function failure(res, path) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    // A non-JSON body is reported with the status.
  }
  const msg = body?.error ? `${body.error} (HTTP ${res.status})` : `HTTP ${res.status} for ${path}`;
  return res.status === 401 ? new AuthRequired(body?.error ?? "a read token is needed") : new ApiError(msg);
}

async function getJson(path) {
  const res = await apiFetch(path, "application/json");
  if (!res.ok) throw await failure(res, path);
  try {
    return await res.json();
  } catch {
    throw new ApiError(`HTTP ${res.status} for ${path}: not JSON`);
  }
}

/**
 * Downloads an export through fetch (so the read token goes with it) and saves it under the
 * collector's file name. With `subset` (`{nodes, links}`, see model.js `visibleSubset`), the
 * export covers only that part of the map (POST to the same path).
 */
export async function downloadExport(path, subset = undefined) {
  const res = await apiFetch(path, "*/*", subset);
  if (!res.ok) throw await failure(res, path);
  const blob = await res.blob();
  const name = /filename="([^"]+)"/.exec(res.headers.get("Content-Disposition") ?? "")?.[1] ?? "trafficmap-export";
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/**
 * The collector's viewer settings (`[viewer]`: suppression presets), as
 * `{suppression_presets: [{name, env, archdomain, hide_nodes}]}`.
 */
export async function fetchViewerConfig() {
  const body = await getJson("/api/v1/viewer-config");
  if (!body || !Array.isArray(body.suppression_presets)) throw new ApiError("malformed /api/v1/viewer-config answer");
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
