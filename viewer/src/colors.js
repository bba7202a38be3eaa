// Colours. Hex only: sigma parses `#rrggbb[aa]` and `rgb()`, and renders `hsl()` black.

import { compareEnvs } from "./model.js";

// A qualitative palette that stays distinguishable on a light background (Tableau 10 order).
export const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#e15759", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#17becf", "#8c6d31", "#637939"];

export const EXTERNAL = "#9aa0a6";
export const UNKNOWN = "#bab0ac";
export const BACKGROUND = "#f7f8fa";
export const DIMMED_NODE = "#dde1e7";
export const DIMMED_EDGE = "#e4e7ec";
export const HIGHLIGHT = "#111827";

export const KIND_COLORS = {
  host: "#4e79a7",
  unmonitored: "#76b7b2",
  external: EXTERNAL,
  cluster: "#59a14f",
  security_group: "#b07aa1",
  workload: "#f28e2b", // issue 11
};

export const DIFF_COLORS = { new: "#2ca02c", gone: "#d62728", changed: "#ff9f1c", same: "#b8bec8" };

export const COST_COLORS = { same_az: "#9aa5b5", cross_az: "#f28e2b", cross_region: "#b07aa1", internet: "#e15759", unknown: "#c5cbd3" };

export const EDGE_NEUTRAL = "#7d8799";
export const EDGE_CROSS_ENV = "#e15759";

/**
 * Assigns palette colours to categories (envs or archdomain tops) in their display order, so
 * that the same fleet gets the same colours every day (the order, not the data, decides).
 */
export function categoryColors(keys, compare) {
  const sorted = [...new Set(keys)].filter((k) => k !== null && k !== undefined).sort(compare ?? undefined);
  const out = new Map();
  sorted.forEach((k, i) => out.set(k, PALETTE[i % PALETTE.length]));
  return out;
}

export function envColors(envs) {
  return categoryColors(envs, compareEnvs);
}

/** `#rrggbb` mixed with white by `t` (0..1), for unmonitored fills and group hulls. */
export function tint(hex, t) {
  const n = parseInt(hex.slice(1, 7), 16);
  const mix = (c) => Math.round(c + (255 - c) * t);
  const r = mix((n >> 16) & 255), g = mix((n >> 8) & 255), b = mix(n & 255);
  return `#${((1 << 24) | (r << 16) | (g << 8) | b).toString(16).slice(1)}`;
}

/** `#rrggbb` darkened by `t` (0..1), for node borders. */
export function shade(hex, t) {
  const n = parseInt(hex.slice(1, 7), 16);
  const mix = (c) => Math.round(c * (1 - t));
  const r = mix((n >> 16) & 255), g = mix((n >> 8) & 255), b = mix(n & 255);
  return `#${((1 << 24) | (r << 16) | (g << 8) | b).toString(16).slice(1)}`;
}

/** Appends an alpha byte to `#rrggbb` (for the 2D overlays; see `onBackground` for sigma). */
export function withAlpha(hex, a) {
  return hex.slice(0, 7) + Math.round(Math.max(0, Math.min(1, a)) * 255).toString(16).padStart(2, "0");
}

/**
 * `#rrggbb` at opacity `a` over the map background, as an opaque colour. Sigma blends colours
 * as if premultiplied, so a translucent light colour comes out brighter than white; opaque
 * colours look the same in sigma, the canvas renderer and the exports.
 */
export function onBackground(hex, a) {
  const n = parseInt(hex.slice(1, 7), 16);
  const b = parseInt(BACKGROUND.slice(1, 7), 16);
  const mix = (sh) => Math.round(((n >> sh) & 255) * a + ((b >> sh) & 255) * (1 - a));
  return `#${((1 << 24) | (mix(16) << 16) | (mix(8) << 8) | mix(0)).toString(16).slice(1)}`;
}
