// The module stays under 10 KiB minified and gzipped (esbuild, as `npm run size` measures it),
// and imports nothing.
import { it } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { transform } from "esbuild";
import { JS_DIR } from "../testlib/harness.js";

const LIMIT = 10 * 1024;

it("src/index.js is under 10 KiB minified+gzipped and has no imports", async (t) => {
  const source = await readFile(path.join(JS_DIR, "src", "index.js"), "utf8");
  const { code } = await transform(source, { minify: true, format: "esm" });
  const size = gzipSync(code).length;
  t.diagnostic(`${size} bytes minified+gzipped (${code.length} minified, ${source.length} source)`);
  assert.ok(size < LIMIT, `${size} bytes`);
  assert.doesNotMatch(code, /\bimport\s*[\w{*"']/, "no runtime dependency");
});
