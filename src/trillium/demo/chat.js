// The chat room's page: one WebSocket to /chat on the server that served this page.
// Everything the server sends is JSON; everything shown goes through textContent,
// so names and messages are never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), text = $("text"), submit = $("submit"), statusBadge = $("status");
let you = null;

function setStatus(state, label) {
  statusBadge.dataset.state = state;
  statusBadge.textContent = label;
  text.disabled = submit.disabled = state !== "online";
  if (state === "online") text.focus();
}

function add(className, parts) {
  const item = document.createElement("li");
  item.className = className;
  for (const [cls, value] of parts) {
    const span = document.createElement("span");
    if (cls) span.className = cls;
    span.textContent = value;
    item.append(span);
  }
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(item);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function showMessage(m) {
  const at = new Date(m.at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  add(m.from === you ? "message mine" : "message", [["from", m.from], ["text", m.text], ["at", at]]);
}

function showOnline(names) {
  const list = $("online");
  list.replaceChildren(...names.map((name) => {
    const item = document.createElement("li");
    item.textContent = name === you ? `${name} (you)` : name;
    if (name === you) item.className = "me";
    return item;
  }));
  $("count").textContent = `(${names.length})`;
}

const handlers = {
  welcome(e) {
    you = e.you;
    $("you").textContent = `you are ${you}`;
    e.history.forEach(showMessage);
    add("notice", [["", `You joined the room as ${you}.`]]);
  },
  join(e) { add("notice", [["", `${e.name} joined.`]]); },
  leave(e) { add("notice", [["", `${e.name} left.`]]); },
  rename(e) {
    if (e.old === you) { you = e.name; $("you").textContent = `you are ${you}`; }
    add("notice", [["", `${e.old} is now ${e.name}.`]]);
  },
  message: showMessage,
};

const params = new URLSearchParams(location.search);
const scheme = location.protocol === "https:" ? "wss" : "ws";
const ws = new WebSocket(
  `${scheme}://${location.host}/chat?name=${encodeURIComponent(params.get("name") || "")}`
);
ws.onopen = () => setStatus("online", "online");
ws.onmessage = (message) => {
  const event = JSON.parse(message.data);
  handlers[event.type]?.(event);
  if (event.online) showOnline(event.online);
};
ws.onclose = (e) => {
  setStatus("offline", "disconnected");
  add("notice", [["", `Disconnected (code ${e.code}). Reload the page to join again.`]]);
};

$("send").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = text.value.trim();
  if (!value || ws.readyState !== WebSocket.OPEN) return;
  const nick = value.match(/^\/nick\s+(.+)$/);
  ws.send(JSON.stringify(nick ? { type: "rename", name: nick[1] } : { type: "message", text: value }));
  text.value = "";
});
