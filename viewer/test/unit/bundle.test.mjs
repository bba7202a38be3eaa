import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { externalReferences } from "../../bundle-refs.mjs";

const here = dirname(fileURLToPath(import.meta.url));

function bundle(files) {
  const dir = mkdtempSync(join(tmpdir(), "bundle-test-"));
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}

test("the committed bundle references nothing outside itself", () => {
  assert.deepEqual(externalReferences(join(here, "../../dist")), []);
});

test("external references are found", () => {
  const dir = bundle({
    "index.html": '<link rel="stylesheet" href="./a.css"><script src="https://cdn.example.com/x.js"></script><img src="./missing.png">',
    "a.css": "body{background:url(//fonts.example.org/bg.png)} .x{background:url(data:image/png;base64,AAAA)}",
    "app.js": 'fetch("http://api.example.net/v1");const ns="http://www.w3.org/2000/svg";',
  });
  try {
    const found = externalReferences(dir).sort();
    assert.deepEqual(found, [
      "a.css: //fonts.example.org/bg.png",
      "a.css: //fonts.example.org/bg.png is not a file of the bundle",
      "app.js: http://api.example.net/v1",
      "index.html: ./missing.png is not a file of the bundle",
      "index.html: https://cdn.example.com/x.js",
      "index.html: https://cdn.example.com/x.js is not a file of the bundle",
    ]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
