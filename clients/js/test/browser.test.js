// examples/chat.html in headless Chromium: page A on node 1, page B on node 2, chatting in a
// room and directly; node 1 is drained (SIGTERM) mid-stream; both pages keep every message.
// Saves test/out/chat.png (page A) and test/out/chat-b.png (page B).
import { describe, it, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { readFile } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import puppeteer from "puppeteer-core";
import { JS_DIR, startRedis, startNode, track, cleanup, range } from "../testlib/harness.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const N = 60; // messages per stream
const GAP_MS = 30; // between two messages of a stream: a fast typist, so the drain lands mid-stream
const OUT = path.join(JS_DIR, "test", "out");
const MIME = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8" };

/** Serve examples/ and src/ of clients/js on loopback. */
async function staticServer() {
  const server = http.createServer(async (req, res) => {
    const file = path.normalize(new URL(req.url, "http://x").pathname).replace(/^\/+/, "");
    const ok = /^(examples|src)\/[\w.-]+$/.test(file) && MIME[path.extname(file)];
    try {
      if (!ok) throw new Error("not served");
      const body = await readFile(path.join(JS_DIR, file));
      res.writeHead(200, { "content-type": MIME[path.extname(file)] }).end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return track({ origin: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) });
}

describe("browser chat (examples/chat.html in headless Chromium)", { timeout: 90000 }, () => {
  let browser, profile;
  after(async () => {
    await browser?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await cleanup();
  });

  it("two pages chat through two nodes; node 1 drains mid-stream; both keep every message", { timeout: 80000 }, async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`Chromium not found at ${CHROMIUM}: install it (apt-get install chromium; scripts/test does) or set CHROMIUM`);
    }
    const redis = await startRedis();
    const [n1, n2] = await Promise.all([
      startNode({ redis, history: true, args: ["--drain-timeout", "5s"] }),
      startNode({ redis, history: true, args: ["--drain-timeout", "5s"] }),
    ]);
    const web = await staticServer();
    profile = mkdtempSync(path.join(os.tmpdir(), "wsctl-chromium-"));
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      userDataDir: profile,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const open = async (user, urls) => {
      const page = await browser.newPage();
      await page.setViewport({ width: 900, height: 620 });
      const errors = [];
      page.on("pageerror", (e) => errors.push(String(e)));
      const q = new URLSearchParams([["user", user], ...urls.map((u) => ["url", u])]);
      await page.goto(`${web.origin}/examples/chat.html?${q}`);
      await page.evaluate(() => window.chat.ready);
      page.errors = errors;
      return page;
    };
    const a = await open("alice", [n1.url, n2.url]);
    const b = await open("bob", [n2.url, n1.url]);
    const log = (page) => page.evaluate(() => window.chat.log.filter((m) => m.kind === "room" || m.kind === "dm"));
    const texts = async (page, prefix) => (await log(page)).map((m) => m.text).filter((t) => t.startsWith(prefix));
    const waitCount = (page, prefix, n) => page.waitForFunction(
      (p, k) => window.chat.log.filter((m) => (m.kind === "room" || m.kind === "dm") && m.text.startsWith(p)).length >= k,
      { timeout: 30000 }, prefix, n);

    // Through the UI: type into the page and press Enter.
    await a.type("#text", "hello from alice");
    await a.keyboard.press("Enter");
    await waitCount(b, "hello from alice", 1);
    assert.match(await a.$eval("#state", (e) => e.textContent), /connected/);

    // Streams: A to the room and to bob, B to alice; node 1 (A's) drains in the middle.
    await a.evaluate((n, gap) => {
      const pause = () => new Promise((r) => setTimeout(r, gap));
      window.streamA = (async () => {
        for (let i = 1; i <= n; i++) {
          await window.chat.send("#lobby", `a-r-${i}`);
          await window.chat.send("bob", `a-d-${i}`);
          await pause();
        }
      })();
    }, N, GAP_MS);
    await b.evaluate((n, gap) => {
      const pause = () => new Promise((r) => setTimeout(r, gap));
      window.streamB = (async () => { for (let i = 1; i <= n; i++) { await window.chat.send("alice", `b-d-${i}`); await pause(); } })();
    }, N, GAP_MS);
    await waitCount(b, "a-r-", N / 4);
    assert.ok((await texts(b, "a-r-")).length < N / 2, "the drain must land mid-stream");
    const drained = n1.stop("SIGTERM");
    await a.waitForFunction(() => /1012/.test(document.getElementById("close").textContent), { timeout: 15000 });
    await Promise.all([a.evaluate(() => window.streamA), b.evaluate(() => window.streamB)]);
    await Promise.all([waitCount(b, "a-r-", N), waitCount(b, "a-d-", N), waitCount(a, "b-d-", N)]);
    assert.equal((await drained).code, 0);

    const want = (p) => range(N).map((i) => `${p}${i}`);
    assert.deepEqual(await texts(b, "a-r-"), want("a-r-"), "page B: every room message of A, once, in order");
    assert.deepEqual(await texts(b, "a-d-"), want("a-d-"), "page B: every direct message of A, once, in order");
    assert.deepEqual(await texts(a, "b-d-"), want("b-d-"), "page A: every direct message of B, once, in order");
    assert.equal(await a.$eval("#node", (e) => e.textContent), n2.url, "page A moved to node 2");
    assert.match(await a.$eval("#state", (e) => e.textContent), /^connected$/);
    assert.deepEqual([a.errors, b.errors], [[], []]);

    mkdirSync(OUT, { recursive: true });
    await a.screenshot({ path: path.join(OUT, "chat.png") });
    await b.screenshot({ path: path.join(OUT, "chat-b.png") });
  });
});
