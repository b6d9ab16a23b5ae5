// The local API as the kiosk and till screens use it: the station's token, JSON calls and their errors, the
// server-sent event stream, money, and building DOM from data without ever parsing it as HTML.
// Served at /shared/api.js for both screens.

const TOKEN_KEY = "pos-edge-api-token";

/** Takes `token` out of the URL fragment into sessionStorage; answers the token and the fragment's other
 *  options (e.g. `#token=...&final=8`). The token leaves the address bar and never goes to a server in a URL. */
export function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }
  return { token: sessionStorage.getItem(TOKEN_KEY) ?? "", options: params };
}

/** Empties the browser's storage (sessionStorage and localStorage) but for the station's token that readFragment
 *  keeps: what a kiosk does before its next shopper. */
export function forgetAllButToken() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  sessionStorage.clear();
  localStorage.clear();
  if (token !== null) sessionStorage.setItem(TOKEN_KEY, token);
}

/** A refused request: `status`, the API's `code` (`error`), `message` (for the cashier), `messageZh`. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.error ?? `http_${status}`;
    this.messageZh = body.message_zh ?? null;
    this.body = body;
  }
}

/** A random key (crypto.randomUUID needs a secure context; a kiosk may reach the agent over plain http). */
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const UNREACHABLE = {
  error: "agent_unreachable",
  message: "The POS Edge agent is not answering. Is pos-edge running?",
  message_zh: "系统暂时无法连接，请联系店员",
};

export class Api {
  constructor(token) {
    this.token = token;
    this.onUnauthorized = () => {};
  }

  async call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    // One key per user action: if the answer is lost, the request sent again is answered once, never done twice.
    if (method !== "GET") headers["Idempotency-Key"] = newKey();
    const send = () => fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let response;
    try {
      response = await send();
    } catch {
      if (method === "GET") throw new ApiError(0, UNREACHABLE);
      await new Promise((resolve) => setTimeout(resolve, 1000));
      try { response = await send(); } catch { throw new ApiError(0, UNREACHABLE); }
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (response.ok) return data;
    const error = new ApiError(response.status, errorBody(response.status, data, text));
    if (response.status === 401) this.onUnauthorized(error);
    throw error;
  }

  get(path) { return this.call("GET", path); }
  post(path, body = {}) { return this.call("POST", path, body); }
  put(path, body) { return this.call("PUT", path, body); }
  delete(path) { return this.call("DELETE", path); }

  /** Follows a server-sent event stream; `onEvent(type, data)` for every event. EventSource reconnects by
   *  itself (with Last-Event-ID) after a network error; a refused stream (401, 404) is retried after a pause,
   *  once a plain request has said why (which reaches `onUnauthorized`). `onLink(up)` reports the link. */
  follow(path, types, onEvent, onLink = () => {}) {
    const url = this.token ? `${path}?token=${encodeURIComponent(this.token)}` : path;
    let source;
    const open = () => {
      source = new EventSource(url);
      source.onopen = () => onLink(true);
      source.onerror = () => {
        onLink(false);
        if (source.readyState !== EventSource.CLOSED) return;
        this.get("/v1/status").catch(() => {});
        setTimeout(open, 3000);
      };
      for (const type of types) {
        source.addEventListener(type, (event) => {
          let data;
          try { data = JSON.parse(event.data); } catch { return; }
          onEvent(type, data);
        });
      }
    };
    open();
    return () => source.close();
  }
}

function errorBody(status, data, text) {
  const body = data && typeof data === "object" && !Array.isArray(data) ? { ...data } : {};
  // Routes outside the checkout API answer FastAPI's {"detail": ...}.
  if (!body.message && body.detail !== undefined) {
    body.message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  }
  if (!body.message) body.message = `HTTP ${status}${text && !data ? `: ${text.slice(0, 200)}` : ""}`;
  if (status === 401) body.error = body.error ?? "unauthorized";
  return body;
}

/** Integer fen as "¥12.34" (no floating point on the way). */
export function yuan(fen) {
  const value = Number(fen ?? 0);
  const sign = value < 0 ? "-" : "";
  const abs = Math.abs(Math.trunc(value));
  return `${sign}¥${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, "0")}`;
}

/** "12", "12.3" or "12.34" yuan as integer fen; null for anything else. */
export function parseYuan(text) {
  const match = /^\s*(\d{1,7})(?:\.(\d{1,2}))?\s*$/.exec(text ?? "");
  if (!match) return null;
  return Number(match[1]) * 100 + Number((match[2] ?? "").padEnd(2, "0"));
}

/** An element with properties (`className`, `hidden`, `dataset`, `onclick`, ...) and children: nodes, or
 *  strings added as text. Data never goes through innerHTML. */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("aria-") || key === "role" || key === "for") node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false).map(
    (child) => (child instanceof Node ? child : String(child)),
  ));
  return node;
}

/** Chinese first, English underneath. */
export function bilingual(zh, en, tag = "div") {
  return h(tag, { className: "bi" }, h("span", { className: "zh", lang: "zh-CN" }, zh), h("span", { className: "en", lang: "en" }, en));
}

export const OPEN_STATES = new Set(["idle", "member", "basket", "tender"]);
export const PAID_STATES = new Set(["paid", "closed"]);
export const EVENT_TYPES = ["opened", "scan", "member", "basket", "payment", "paid", "printed", "message", "closed", "cancelled", "status", "refunded", "help", "wallet"];
