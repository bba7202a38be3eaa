// Listing a built bundle and finding references that point outside it (used by build.mjs
// --check and its unit test).
import { readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";

export function listFiles(dir) {
  const outFiles = [];
  const walk = (d) => {
    for (const e of readdirSync(d)) {
      const p = join(d, e);
      if (statSync(p).isDirectory()) walk(p);
      else outFiles.push(relative(dir, p));
    }
  };
  walk(dir);
  return outFiles.sort();
}

/**
 * A bundle that works offline references nothing outside itself: no absolute or
 * protocol-relative URL anywhere (the SVG namespace URI names a namespace and is never fetched),
 * and every `src=`, `href=` and `url()` of the markup and styles is a file of the bundle.
 */
export function externalReferences(dir) {
  const problems = [];
  const allowed = new Set(["http://www.w3.org/2000/svg"]);
  const files = listFiles(dir);
  for (const f of files) {
    const text = readFileSync(join(dir, f), "utf8");
    for (const m of text.matchAll(/(?:[a-z][a-z0-9+.-]*:)?\/\/[a-z0-9.-]+\.[a-z]{2,}[^\s"'`)<>]*/gi)) {
      if (!allowed.has(m[0])) problems.push(`${f}: ${m[0]}`);
    }
    if (f.endsWith(".html") || f.endsWith(".css") || f.endsWith(".svg")) {
      for (const m of text.matchAll(/(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)/gi)) {
        const ref = m[1] ?? m[2];
        if (ref.startsWith("data:") || ref.startsWith("#")) continue;
        const target = relative(dir, join(dir, dirname(f), ref.split(/[?#]/)[0]));
        if (/^[a-z][a-z0-9+.-]*:/i.test(ref) || !files.includes(target)) problems.push(`${f}: ${ref} is not a file of the bundle`);
      }
    }
  }
  return problems;
}

