// permessage-deflate helpers shared by echo_server.js and client.js.
"use strict";

// The compressible payloads of the deflate scenarios, as in tests/interop/_helpers.py:
// JSON-like text of about 230 kB, and 256 KiB of binary, half zeros.
const JSON_TEXT =
  "[" +
  Array.from(
    { length: 5000 },
    (_, i) => `{"id": ${i}, "name": "user${i % 97}", "ok": ${i % 3 === 0}}`,
  ).join(", ") +
  "]";
const ZEBRA = Buffer.alloc(512 * 512);
for (let i = 0; i < ZEBRA.length; i++) ZEBRA[i] = i % 512 < 256 ? i % 256 : 0;

// The perMessageDeflate option for a mode: "off", "on" or "strict".
function deflateOptions(mode) {
  if (mode === "off") return false;
  if (mode === "on") return true;
  if (mode === "strict") {
    return {
      serverNoContextTakeover: true,
      clientNoContextTakeover: true,
      serverMaxWindowBits: 10,
      clientMaxWindowBits: 10,
    };
  }
  throw new Error(`unknown deflate mode ${mode}`);
}

// Count the compressed frames `ws` inflates; return a function reporting that count,
// the negotiated parameters and the bytes its socket carried so far.
function watchDeflate(ws) {
  let compressedIn = 0;
  const ext = ws._extensions["permessage-deflate"];
  if (ext) {
    const decompress = ext.decompress;
    ext.decompress = function (data, fin, callback) {
      compressedIn++;
      return decompress.call(this, data, fin, callback);
    };
  }
  return () => ({
    extensions: ws.extensions,
    params: ext ? ext.params : null,
    compressed_in: compressedIn,
    bytes_read: ws._socket.bytesRead,
    bytes_written: ws._socket.bytesWritten,
  });
}

module.exports = { JSON_TEXT, ZEBRA, deflateOptions, watchDeflate };
