// A Node `ws` client for trillium's interop tests: node client.js URL [SCENARIO]
//
// SCENARIO "echo" (the default) sends text, binary, a 1 MiB binary message and a
// fragmented text message, checks each echo, asks for a fragmented message and a
// ping ("cmd:fragments", "cmd:ping"), then closes with 4000 "done".
// SCENARIO "flood" sends 500 binary messages at once and checks every echo, in order.
// SCENARIO "server-close" asks the server to close with 4002 "server-bye".
// SCENARIO "compressed" (node client.js URL compressed [DEFLATE], DEFLATE as in
// echo_server.js, "on" by default) exchanges large compressible messages, whole and
// fragmented, then reports the negotiated permessage-deflate and closes with 1000.
// Prints its observations as one JSON line, and exits 0 only if every check passed.
"use strict";

const assert = require("node:assert/strict");
const WebSocket = require("ws");
const { JSON_TEXT, ZEBRA, deflateOptions, watchDeflate } = require("./deflate.js");

const TEXT = "héllo wörld ✓ 🎉";
const BINARY = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const BIG = Buffer.alloc(1024 * 1024, BINARY); // 1 MiB: bytes 0..255 repeated

const [url, scenario = "echo", deflateMode] = process.argv.slice(2);

const timer = setTimeout(() => {
  console.error("timed out");
  process.exit(2);
}, 15000);

async function main() {
  const options = { maxPayload: 4 * 1024 * 1024 };
  if (deflateMode !== undefined) options.perMessageDeflate = deflateOptions(deflateMode);
  const ws = new WebSocket(url, options);
  const queue = [];
  const waiters = [];
  ws.on("message", (data, isBinary) => {
    const message = isBinary ? data : data.toString("utf8");
    if (waiters.length) waiters.shift()(message);
    else queue.push(message);
  });
  const closed = new Promise((resolve) => {
    ws.on("close", (code, reason) => resolve({ code, reason: reason.toString("utf8") }));
  });
  const recv = () =>
    queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r));
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });

  const observed = {};
  if (scenario === "echo") {
    for (const message of [TEXT, BINARY, BIG]) {
      ws.send(message);
      const answer = await recv();
      assert.equal(typeof answer, typeof message, "echo kept the message type");
      assert.ok(
        typeof message === "string" ? answer === message : message.equals(answer),
        `echo of a ${message.length}-unit message differs`,
      );
    }
    ws.send("frag", { fin: false });
    ws.send("men", { fin: false });
    ws.send("ted", { fin: true });
    assert.equal(await recv(), "fragmented");
    ws.send("cmd:fragments");
    assert.equal(await recv(), "fragmented");
    ws.send("cmd:ping");
    assert.equal(await recv(), "pinged");
    ws.close(4000, "done");
  } else if (scenario === "flood") {
    // 500 messages of 20 kB sent at once, without waiting: trillium's read back-pressure
    // (max_queue) and write buffering must deliver every echo, in order.
    const count = 500;
    for (let i = 0; i < count; i++) ws.send(Buffer.alloc(20000, i & 255));
    for (let i = 0; i < count; i++) {
      const answer = await recv();
      assert.ok(Buffer.isBuffer(answer) && answer.length === 20000, `echo ${i} has the wrong size`);
      assert.ok(answer.every((b) => b === (i & 255)), `echo ${i} is out of order or corrupt`);
    }
    observed.echoes = count;
    ws.close(4000, "done");
  } else if (scenario === "compressed") {
    const deflate = watchDeflate(ws);
    const same = (a, b) => (typeof a === "string" ? a === b : Buffer.isBuffer(b) && a.equals(b));
    for (const message of [JSON_TEXT, ZEBRA, BIG, TEXT, JSON_TEXT, ZEBRA]) {
      ws.send(message);
      assert.ok(same(message, await recv()), `echo of a ${message.length}-unit message differs`);
    }
    ws.send(JSON_TEXT.slice(0, 100000), { fin: false });
    ws.send(JSON_TEXT.slice(100000), { fin: true });
    assert.equal(await recv(), JSON_TEXT, "fragmented compressible text echo");
    ws.send(ZEBRA, { fin: false });
    ws.send(ZEBRA, { fin: true });
    assert.ok(same(Buffer.concat([ZEBRA, ZEBRA]), await recv()), "fragmented binary echo");
    ws.send("cmd:fragments");
    assert.equal(await recv(), "fragmented");
    ws.send("cmd:binfragments");
    assert.ok(same(Buffer.from("fragmented"), await recv()), "fragmented binary from trillium");
    observed.deflate = deflate();
    ws.close(1000, "done");
  } else if (scenario === "server-close") {
    ws.send("cmd:close 4002 server-bye");
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
  const { code, reason } = await closed;
  observed.close_code = code;
  observed.close_reason = reason;
  process.stdout.write(JSON.stringify(observed) + "\n");
}

main().then(
  () => {
    clearTimeout(timer);
    process.exit(0);
  },
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
