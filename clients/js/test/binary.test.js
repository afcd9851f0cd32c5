// The server these suites run: $WSCTL_BIN, else ../../target/debug/wsctl (cargo's debug build).
// Fails first and plainly when it is missing, instead of every suite's setup failing.
import { it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { WSCTL_BIN } from "../testlib/harness.js";

it("the wsctl binary is there and runs", (t) => {
  assert.ok(existsSync(WSCTL_BIN), `wsctl binary not found at ${WSCTL_BIN}: build it (cargo build) or set WSCTL_BIN`);
  const version = execFileSync(WSCTL_BIN, ["--version"], { encoding: "utf8" }).trim();
  t.diagnostic(`${WSCTL_BIN}: ${version}`);
  assert.match(version, /^wsctl /);
});
