// Device console: the station's scanners, its printer queue and receipt previews, refreshed every second.
"use strict";

const $ = (id) => document.getElementById(id);

// The station's API token arrives in the URL fragment (never sent to a server) and stays for this tab.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  sessionStorage.setItem("pos-edge-token", fragment.get("token"));
  history.replaceState(null, "", location.pathname);
}
const token = sessionStorage.getItem("pos-edge-token") || "";
// Images cannot send headers: they carry the token as a query parameter.
const withToken = (url) => `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;

async function getJSON(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${token}` };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) throw new Error("this console needs the station's API token: open it with #token=... as the agent printed");
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

// A table cell shows one line, cut to fit; the whole text is its title (a 4 KB scan of garbage included).
function cell(text, className = "") {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  td.title = td.textContent;
  td.className = className;
  return td;
}

// A device's or a job's error, cut to three lines on screen and whole in its title.
function reason(text, tag = "span") {
  return Object.assign(document.createElement(tag), { className: "reason", textContent: text, title: text });
}

function stateSpan(state) {
  const span = document.createElement("span");
  span.className = `state ${state}`;
  span.textContent = state;
  return span;
}

async function refreshStatus() {
  const status = await getJSON("/v1/status");
  $("store").textContent = `${status.store_name} (${status.store_id})`;
  $("station").textContent = `${status.station_kind} ${status.station_id} · pos-edge ${status.version}`;
}

async function refreshDevices() {
  const devices = await getJSON("/v1/devices");
  const list = $("scanners");
  list.replaceChildren(...devices.scanners.map((scanner) => {
    const li = document.createElement("li");
    li.append(`扫码枪 ${scanner.id} `, stateSpan(scanner.state));
    if (scanner.reason) li.append(reason(scanner.reason));
    return li;
  }));
  const simulated = devices.scanners.filter((s) => s.simulated);
  $("scan-form").hidden = simulated.length === 0;
  const select = $("scan-device");
  if (select.options.length !== simulated.length) {
    select.replaceChildren(...simulated.map((s) => new Option(s.id, s.id)));
  }
  const printer = $("printer");
  if (!devices.printer) {
    printer.textContent = "没有打印机 No printer configured";
    return;
  }
  const p = devices.printer;
  const div = document.createElement("div");
  div.append(`打印机 ${p.id} `, stateSpan(p.state), ` 排队 queued ${p.queued}`);
  if (p.uncertain) div.append(` · 待确认 to check ${p.uncertain}`);
  if (p.reason) div.append(reason(p.reason));
  printer.replaceChildren(div);
}

async function refreshScans() {
  const scans = await getJSON("/v1/scans");
  if (scans.length === 0) return;
  $("scans").replaceChildren(...scans.map((scan) => {
    const tr = document.createElement("tr");
    tr.append(cell(new Date(scan.at).toLocaleTimeString()), cell(scan.device_id), cell(scan.kind), cell(scan.provider), cell(scan.value, "value"));
    return tr;
  }));
}

function jobAction(job, action, label) {
  const button = document.createElement("button");
  button.textContent = label;
  button.addEventListener("click", () => getJSON(`/v1/printer/jobs/${encodeURIComponent(job.id)}/${action}`, { method: "POST" }).then(refresh));
  return button;
}

async function refreshJobs() {
  let jobs;
  try { jobs = await getJSON("/v1/printer/jobs"); } catch { return; }
  $("jobs").replaceChildren(...jobs.slice(0, 12).map((job) => {
    const li = document.createElement("li");
    li.dataset.status = job.status;
    if (job.preview_url) {
      const link = Object.assign(document.createElement("a"), { href: withToken(job.preview_url), target: "_blank" });
      link.append(Object.assign(document.createElement("img"), { src: withToken(job.preview_url), alt: `receipt ${job.id}` }));
      li.append(link, document.createElement("br"));
    }
    li.append(`${job.purpose} · `, stateSpan(job.status));
    if (job.last_error) li.append(reason(job.last_error, "div"));
    if (job.status === "uncertain") li.append(jobAction(job, "release", "重打 Reprint"), jobAction(job, "mark-printed", "已打印 It printed"));
    if (job.status === "queued") li.append(jobAction(job, "cancel", "取消 Cancel"));
    return li;
  }));
}

async function refresh() {
  await Promise.allSettled([refreshDevices(), refreshScans(), refreshJobs()]);
}

$("scan-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("scan-text").value.trim();
  if (!text) return;
  await getJSON(`/v1/devices/${encodeURIComponent($("scan-device").value)}/scan`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text }),
  });
  $("scan-text").value = "";
  setTimeout(refresh, 100);
});

$("test-page").addEventListener("click", () => getJSON("/v1/printer/test-page", { method: "POST" }).then(refresh));

refreshStatus();
refresh();
setInterval(refresh, 1000);
