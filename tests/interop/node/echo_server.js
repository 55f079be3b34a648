// A Node `ws` echo server for trillium's interop tests.
//
// Listens on 127.0.0.1 with an ephemeral port and prints {"port": N} first. Echoes
// text as text and binary as binary. Commands (text): "cmd:close CODE REASON" closes
// with that code and reason; "cmd:ping" pings and answers "pinged" once the pong came.
// After each connection it prints {"event": "closed", "code": ..., "reason": ...}
// with the close code and reason it received.
//
// node echo_server.js [DEFLATE]: DEFLATE is "off" (ws' server default, no
// permessage-deflate), "on" (perMessageDeflate: true) or "strict" (no context takeover
// either way, 10-bit windows both ways). "cmd:deflate" answers, as JSON, the negotiated
// parameters, the compressed frames received and the bytes the socket carried.
"use strict";

const { WebSocketServer } = require("ws");
const { deflateOptions, watchDeflate } = require("./deflate.js");

const report = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");

const wss = new WebSocketServer({
  host: "127.0.0.1",
  port: 0,
  maxPayload: 4 * 1024 * 1024,
  perMessageDeflate: deflateOptions(process.argv[2] || "off"),
});

wss.on("listening", () => report({ port: wss.address().port }));

wss.on("connection", (ws) => {
  const deflate = watchDeflate(ws);
  ws.on("message", (data, isBinary) => {
    if (!isBinary) {
      const text = data.toString("utf8");
      if (text === "cmd:deflate") {
        ws.send(JSON.stringify(deflate()));
        return;
      }
      if (text.startsWith("cmd:close ")) {
        const [, code, ...reason] = text.split(" ");
        ws.close(Number(code), reason.join(" "));
        return;
      }
      if (text === "cmd:ping") {
        ws.once("pong", () => ws.send("pinged"));
        ws.ping(Buffer.from("from node"));
        return;
      }
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on("close", (code, reason) => {
    report({ event: "closed", code, reason: reason.toString("utf8") });
  });
  ws.on("error", (err) => report({ event: "error", message: String(err) }));
});
