// Socket.IO 4 peer for the Tidings benchmark suite.
//
// Deliberately minimal: WebSocket transport only, no per-message compression,
// no connection state recovery, no logging on the hot path. See ../README.md
// for the exact wire protocol a load generator must speak.
//
//   PORT (default 6002), HOST (default 127.0.0.1)
//
// Clients:   ws://HOST:PORT/socket.io/?EIO=4&transport=websocket
//            emit "join" with a room name or an array of room names (ack optional)
//            emit "leave" likewise
// Publisher: POST /publish  {"room":"r","event":"msg","data":<any JSON>}
//                           {"messages":[{"room":...,"event":...,"data":...}, ...]}
//            -> 200 {"ok":true}
//            GET /health    -> 200 {"ok":true,"clients":<engine.io client count>}
import http from "node:http";
import { Server } from "socket.io";

const PORT = Number(process.env.PORT || 6002);
const HOST = process.env.HOST || "127.0.0.1";

const OK = Buffer.from('{"ok":true}');

function reply(res, status, body) {
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": body.length,
  });
  res.end(body);
}

function publishOne(m) {
  if (!m || (typeof m.room !== "string" && !Array.isArray(m.room))) return false;
  io.to(m.room).emit(typeof m.event === "string" ? m.event : "msg", m.data);
  return true;
}

const httpServer = http.createServer((req, res) => {
  if (req.method === "POST" && req.url === "/publish") {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        return reply(res, 400, Buffer.from('{"ok":false,"error":"invalid JSON"}'));
      }
      let ok = true;
      if (body && Array.isArray(body.messages)) {
        for (const m of body.messages) ok = publishOne(m) && ok;
      } else {
        ok = publishOne(body);
      }
      if (!ok) return reply(res, 400, Buffer.from('{"ok":false,"error":"missing room"}'));
      reply(res, 200, OK);
    });
    return;
  }
  if (req.method === "GET" && req.url === "/health") {
    return reply(res, 200, Buffer.from(JSON.stringify({ ok: true, clients: io.engine.clientsCount })));
  }
  // Socket.IO handles /socket.io/ itself and never reaches this listener.
  reply(res, 404, Buffer.from('{"ok":false,"error":"not found"}'));
});

// Keep publisher keep-alive connections open across a bench run.
httpServer.keepAliveTimeout = 120_000;
httpServer.headersTimeout = 125_000;

const io = new Server(httpServer, {
  transports: ["websocket"],
  allowUpgrades: false,
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  cors: undefined,
  // connectionStateRecovery deliberately not set (disabled).
  // pingInterval/pingTimeout left at the Socket.IO defaults (25000 / 20000 ms).
});

io.on("connection", (socket) => {
  socket.on("join", (rooms, ack) => {
    if (typeof rooms === "string" || Array.isArray(rooms)) socket.join(rooms);
    if (typeof ack === "function") ack({ ok: true });
  });
  socket.on("leave", (rooms, ack) => {
    for (const r of Array.isArray(rooms) ? rooms : [rooms]) {
      if (typeof r === "string") socket.leave(r);
    }
    if (typeof ack === "function") ack({ ok: true });
  });
});

httpServer.listen(PORT, HOST, () => {
  console.log(`socket.io peer listening on http://${HOST}:${PORT} (pid ${process.pid})`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}
