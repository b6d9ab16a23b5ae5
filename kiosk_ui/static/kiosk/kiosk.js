// The shopper's self-checkout screen. It follows the station's sale over server-sent events and shows one
// screen at a time: idle → (phone keypad) → sale → waiting for the phone → success / failure / cancelled.
// What is on screen is decided from the sale as the agent last described it (`screenName`), plus the few
// things only this screen knows: the keypad, a failed payment the shopper has seen, a sale that timed out.
// Open it as /kiosk/#token=<api.token>; `&final=10` (seconds on the success and cancelled screens) and
// `&idle=120` (seconds before an untouched sale is cancelled) may follow.
import { Api, EVENT_TYPES, OPEN_STATES, PAID_STATES, bilingual, h, readFragment, yuan } from "/shared/api.js";

const { token, options } = readFragment();
const api = new Api(token);
const seconds = (name, fallback) => {
  const value = Number(options.get(name));
  return Number.isFinite(value) && value > 0 ? value : fallback;
};
const FINAL_S = seconds("final", 10); // success and cancelled screens stay this long, then idle
const IDLE_S = seconds("idle", 120); // an open sale nobody touches for this long is cancelled
const NOTICE_S = 8;

const IN_PROGRESS = new Set(["sending", "PENDING", "USERPAYING", "UNKNOWN", "REVERSING"]);
const FAILED = new Set(["FAILED", "REVERSED"]);
// English beside the store's own Chinese tier name (`member.tier_name`, from the agent's settings).
const TIERS_EN = {
  normal: "Member", regular: "Member", member: "Member", silver: "Silver", gold: "Gold", platinum: "Platinum",
  diamond: "Diamond",
};

const $ = (id) => document.getElementById(id);

const ui = {
  session: null, // the station's sale, newest version seen
  dismissed: null, // id of a finished or abandoned sale no longer shown
  started: false,
  locked: false, // 401: this screen has no valid token
  stationOnline: null,
  phone: null, // { digits, openedSession } while the keypad is up
  seenFailures: new Set(), // out_trade_no of failed payments the shopper has dismissed
  cancelledHere: new Set(), // out_trade_no of payments the shopper cancelled on this screen
  refusal: null, // the last step the agent refused: { session_id, zh, en }
  finished: new Set(), // ids of sales seen paid or cancelled
  timedOut: null, // id of the sale this screen cancelled after IDLE_S without activity
  screen: "starting",
  screenSince: Date.now(),
  lastActivity: Date.now(),
};

// --- the sale ------------------------------------------------------------------------------------------------

function current() {
  const s = ui.session;
  return s && s.id !== ui.dismissed ? s : null;
}

function show(session) {
  if (!session || !session.id) return session;
  const old = ui.session;
  if (old && old.id === session.id && (session.version ?? 0) < (old.version ?? 0)) return old;
  if (session.id === ui.dismissed && !OPEN_STATES.has(session.state)) return session; // late news of a finished sale
  if (ui.finished.has(session.id) && OPEN_STATES.has(session.state)) return old; // paid or cancelled is final
  if (!OPEN_STATES.has(session.state)) ui.finished.add(session.id);
  if (!old || old.id !== session.id) ui.dismissed = null;
  const news = !old || old.id !== session.id || (session.version ?? 0) > (old.version ?? 0);
  ui.session = session;
  if (session.member) ui.phone = null;
  if (news) touch(); // something happened in the sale: it is not abandoned
  render();
  return session;
}

function screenName() {
  if (ui.locked) return "locked";
  const s = current();
  if (ui.phone && (!s || (OPEN_STATES.has(s.state) && !s.member))) return "phone";
  if (!s) return ui.started ? "idle" : "starting";
  if (s.state === "cancelled") return "cancelled";
  if (PAID_STATES.has(s.state)) return "success";
  const payment = s.payment;
  const mine = payment && ui.cancelledHere.has(payment.out_trade_no);
  if (payment && IN_PROGRESS.has(payment.state) && !mine) return "waiting";
  if (payment && FAILED.has(payment.state) && !mine && !ui.seenFailures.has(payment.out_trade_no)) return "failure";
  return "sale";
}

function render() {
  const name = screenName();
  if (name !== ui.screen) {
    ui.screen = name;
    ui.screenSince = Date.now();
  }
  document.body.dataset.screen = name;
  for (const section of document.querySelectorAll(".screen")) section.hidden = section.id !== `screen-${name}`;
  const s = current();
  const online = s ? s.online : ui.stationOnline;
  $("offline").hidden = online !== false || name === "locked";
  if (name === "phone") renderPhone();
  if (s && name === "sale") renderSale(s);
  if (s && name === "waiting") renderWaiting(s);
  if (s && name === "failure") renderFailure(s);
  if (s && name === "success") renderSuccess(s);
  if (s && name === "cancelled") renderCancelled(s);
  if (name === "failure" || name === "locked") hideNotice();
}

function tierLabel(member) {
  const tier = member.tier;
  const zh = member.tier_name || tier;
  const en = TIERS_EN[tier] ?? "";
  return h("span", { className: "tier", dataset: { tier } }, zh, en ? h("span", { className: "en" }, ` ${en}`) : "");
}

function renderMember(member) {
  const box = $("member");
  box.hidden = !member;
  if (!member) return box.replaceChildren();
  box.replaceChildren(
    h("span", { className: "name" }, member.display_name || member.phone_masked || "会员"),
    tierLabel(member),
    h("span", { className: "balance" }, h("span", { className: "zh" }, "积分 "), String(member.points ?? 0),
      h("span", { className: "en" }, " points")),
  );
}

function pricingRow(zh, en, value, className = "") {
  return [h("dt", { className }, h("span", { className: "zh" }, zh), " ", h("span", { className: "en" }, en)),
    h("dd", { className }, value)];
}

function redeemablePoints(s) {
  // The most the agent will take on this basket, when the API says it; else the balance (the agent refuses
  // more than its cap with a message, which is shown).
  const most = s.pricing?.max_redeemable_points ?? s.member.points ?? 0;
  return Math.max(0, Math.min(most, s.member.points ?? 0));
}

function renderSale(s) {
  renderMember(s.member);
  const lines = s.lines ?? [];
  $("lines").replaceChildren(...lines.map((line) => h("tr", {},
    h("td", {}, line.name || line.sku, line.qty > 1 ? h("span", { className: "unit" }, ` ${yuan(line.unit_price_fen)}`) : ""),
    h("td", { className: "num" }, `×${line.qty}`),
    h("td", { className: "num" }, yuan(line.amount_fen ?? line.qty * line.unit_price_fen)),
  )));
  $("no-lines").hidden = lines.length > 0;

  const p = s.pricing ?? {};
  const rows = [];
  if (lines.length) rows.push(...pricingRow("小计", "Subtotal", yuan(p.subtotal_fen)));
  if (p.tier_discount_fen) rows.push(...pricingRow("会员折扣", "Member discount", `-${yuan(p.tier_discount_fen)}`, "discount"));
  if (p.coupon_discount_fen) rows.push(...pricingRow("优惠券", "Coupons", `-${yuan(p.coupon_discount_fen)}`, "discount"));
  if (p.points_redeemed) {
    rows.push(...pricingRow(`积分抵扣 ${p.points_redeemed}`, `${p.points_redeemed} points`, `-${yuan(p.points_value_fen)}`, "discount"));
  }
  if (s.paid_fen) rows.push(...pricingRow("已付", "Paid", yuan(s.paid_fen)));
  $("pricing").replaceChildren(...rows);

  $("coupons").replaceChildren(...(s.coupons ?? []).map((coupon) => h("div", { className: "coupon" },
    h("span", {}, coupon.title || coupon.code), h("span", { className: "discount" }, `-${yuan(coupon.amount_off_fen)}`))));

  renderRedeem(s, lines.length > 0);

  const earn = $("earn");
  const earned = s.points?.earned ?? p.points_earned ?? 0;
  earn.hidden = !s.member || !lines.length;
  earn.replaceChildren(
    h("span", { className: "zh" }, `本单可得 ${earned} 积分`), " ", h("span", { className: "en" }, `earns ${earned} points`),
    s.online === false ? h("span", { className: "provisional" }, " （暂计，联网后确认 provisional）") : "",
  );

  const left = s.remaining_fen ?? p.amount_due_fen ?? 0;
  $("due").textContent = yuan(lines.length ? left : 0);
  const payable = lines.length > 0 && left > 0;
  $("pay-prompt").hidden = !payable || s.online === false;
  $("pay-offline").hidden = !payable || s.online !== false;
  $("sale-phone").hidden = Boolean(s.member) || s.state === "tender";
}

function renderRedeem(s, hasLines) {
  const box = $("redeem");
  const member = s.member;
  const used = s.pricing?.points_redeemed ?? 0;
  const most = member ? redeemablePoints(s) : 0;
  box.hidden = !member?.may_redeem || !hasLines || (used === 0 && most === 0) || s.state === "tender";
  if (box.hidden) return box.replaceChildren();
  const button = used
    ? h("button", { type: "button", className: "secondary", id: "redeem-none", onclick: () => redeem(s, 0) },
      h("span", { className: "zh" }, "不使用积分"), h("span", { className: "en" }, "Don't use points"))
    : h("button", { type: "button", id: "redeem-use", onclick: () => redeem(s, most) },
      h("span", { className: "zh" }, `使用 ${most} 积分`), h("span", { className: "en" }, `Use ${most} points`));
  box.replaceChildren(button);
}

async function redeem(s, points) {
  try {
    show(await api.put(`/v1/sessions/${encodeURIComponent(s.id)}/redemption`, { points }));
  } catch (error) {
    notice(error);
  }
}

function renderWaiting(s) {
  const payment = s.payment ?? {};
  const onPhone = payment.state === "USERPAYING";
  $("waiting-title").replaceChildren(onPhone
    ? bilingual("请在手机上确认支付", "Confirm the payment on your phone", "span")
    : bilingual("正在支付，请稍候", "Processing the payment", "span"));
  $("waiting-amount").textContent = yuan(payment.amount_fen ?? s.remaining_fen);
  const state = $("waiting-state");
  if (payment.state === "REVERSING") state.replaceChildren(bilingual("正在取消支付…", "Cancelling the payment…"));
  else if (!onPhone && payment.message_zh) state.replaceChildren(bilingual(payment.message_zh, payment.message ?? ""));
  else state.replaceChildren();
  $("payment-cancel").disabled = payment.state === "REVERSING";
}

function renderFailure(s) {
  const payment = s.payment ?? {};
  const refusal = ui.refusal?.session_id === s.id ? ui.refusal : {};
  $("failure-zh").textContent = payment.message_zh || refusal.zh || "支付未成功，请重试或换一种方式付款";
  $("failure-en").textContent = payment.message || refusal.en || "The payment did not go through.";
}

function renderSuccess(s) {
  $("paid-amount").textContent = yuan(s.paid_fen || s.pricing?.amount_due_fen);
  const rows = [];
  if (s.member) {
    const points = s.points ?? {};
    const mark = s.online === false ? " *" : "";
    rows.push(...pricingRow("本次获得积分", "Points earned", `+${points.earned ?? s.pricing?.points_earned ?? 0}${mark}`, "earned"));
    if (points.redeemed) rows.push(...pricingRow("本次使用积分", "Points used", `-${points.redeemed}`));
    if (points.balance !== undefined && points.balance !== null) {
      rows.push(...pricingRow("积分余额", "New balance", `${points.balance}${mark}`, "balance"));
    }
    if (mark) rows.push(h("dd", { className: "provisional" }, "* 暂计，联网后确认 provisional until the store is back online"));
  }
  if (s.change_fen) rows.push(...pricingRow("找零", "Change", yuan(s.change_fen)));
  $("success-points").replaceChildren(...rows);
  $("receipt-no").textContent = s.receipt_no ?? "—";
}

function renderCancelled(s) {
  const reason = $("cancelled-reason");
  const timedOut = ui.timedOut === s.id;
  reason.replaceChildren(timedOut ? bilingual("长时间无操作，交易已自动取消", "Cancelled after a while without activity") : "");
}

// --- actions -------------------------------------------------------------------------------------------------

async function ensureSale() {
  const s = current();
  if (s && OPEN_STATES.has(s.state)) return { session: s, opened: false };
  try {
    return { session: show(await api.post("/v1/sessions", {})), opened: true };
  } catch (error) {
    if (error.code === "sale_open" && error.body.session_id) {
      return { session: show(await api.get(`/v1/sessions/${encodeURIComponent(error.body.session_id)}`)), opened: false };
    }
    throw error;
  }
}

async function cancelSale(session, { quiet = false, timedOut = false } = {}) {
  if (timedOut) ui.timedOut = session.id;
  try {
    const after = await api.post(`/v1/sessions/${encodeURIComponent(session.id)}/cancel`);
    if (quiet) ui.dismissed = session.id;
    show(after);
    if (quiet) render();
  } catch (error) {
    notice(error);
  }
}

async function cancelPayment() {
  const s = current();
  if (!s?.payment) return;
  ui.cancelledHere.add(s.payment.out_trade_no);
  render();
  try {
    show(await api.post(`/v1/sessions/${encodeURIComponent(s.id)}/payment/cancel`));
    notice({ zh: "支付已取消", en: "Payment cancelled" }, "info");
  } catch (error) {
    ui.cancelledHere.delete(s.payment.out_trade_no);
    render();
    notice(error);
  }
}

// --- phone keypad --------------------------------------------------------------------------------------------

function maskedEntry(digits) {
  // The same mask the agent shows (138****5678): the middle four digits never appear, even while typing.
  return [...digits].map((digit, i) => (i >= 3 && i < 7 ? "*" : digit)).join("");
}

function openPhone() {
  ui.phone = { digits: "" };
  $("phone-mine").checked = false;
  $("phone-error").hidden = true;
  render();
}

function closePhone() {
  const opened = ui.phone?.openedSession;
  ui.phone = null;
  $("phone-mine").checked = false;
  const s = current();
  // A sale this keypad opened and nothing went into: take it away again.
  if (s && s.id === opened && OPEN_STATES.has(s.state) && !s.member && !(s.lines ?? []).length) {
    cancelSale(s, { quiet: true });
  }
  render();
}

function renderPhone() {
  const digits = ui.phone.digits;
  $("phone-display").textContent = maskedEntry(digits).padEnd(11, "_");
  $("phone-ok").disabled = !(/^1[3-9]\d{9}$/.test(digits) && $("phone-mine").checked);
}

function pressKey(key) {
  if (!ui.phone) return;
  const digits = ui.phone.digits;
  if (key === "back") ui.phone.digits = digits.slice(0, -1);
  else if (key === "clear") ui.phone.digits = "";
  else if (/^\d$/.test(key) && digits.length < 11) ui.phone.digits = digits + key;
  $("phone-error").hidden = true;
  renderPhone();
}

async function submitPhone() {
  if (!ui.phone) return;
  const entry = ui.phone;
  $("phone-ok").disabled = true;
  try {
    const { session, opened } = await ensureSale();
    if (opened) entry.openedSession = session.id;
    const after = await api.post(`/v1/sessions/${encodeURIComponent(session.id)}/phone`, { phone: entry.digits, confirmed: true });
    entry.digits = "";
    if (ui.phone === entry) ui.phone = null;
    show(after);
  } catch (error) {
    const box = $("phone-error");
    box.replaceChildren(bilingual(error.messageZh || "未能识别此手机号", error.message));
    box.hidden = false;
    if (ui.phone) renderPhone();
  }
}

// --- notices, activity, start --------------------------------------------------------------------------------

let noticeTimer = null;

/** A short message over the current screen: an ApiError, an event's message or `{ zh, en }`. */
function notice(what, kind = "error") {
  const zh = what.messageZh ?? what.message_zh ?? what.zh ?? null;
  const en = what.en ?? what.message ?? "";
  if (!zh && !en) return;
  const box = $("notice");
  box.className = `notice ${kind}`;
  box.replaceChildren(bilingual(zh ?? "", en));
  box.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(hideNotice, NOTICE_S * 1000);
}

function hideNotice() {
  $("notice").hidden = true;
}

function touch() {
  ui.lastActivity = Date.now();
}

function tick() {
  const now = Date.now();
  const s = current();
  if ((ui.screen === "success" || ui.screen === "cancelled") && now - ui.screenSince >= FINAL_S * 1000) {
    ui.dismissed = s?.id ?? null;
    render();
    return;
  }
  if (now - ui.lastActivity < IDLE_S * 1000) return;
  touch();
  if (ui.screen === "phone") closePhone();
  else if (s && OPEN_STATES.has(s.state) && (ui.screen === "sale" || ui.screen === "failure")) cancelSale(s, { timedOut: true });
}

function onEvent(type, data) {
  const s = data.session;
  if (type === "message") {
    ui.refusal = { session_id: s?.id ?? null, zh: data.message_zh ?? null, en: data.message ?? "" };
    notice({ zh: data.message_zh ?? null, en: data.message ?? "" });
  }
  if (s) show(s);
}

async function refreshStation() {
  try {
    const status = await api.get("/v1/status");
    ui.stationOnline = status.checkout?.online ?? null;
    if (status.store_name) $("store").dataset.store = status.store_name;
    render();
  } catch {
    // 401 locks the screen (onUnauthorized); the agent being away shows on the next call that matters
  }
}

async function resync() {
  const shown = current();
  try {
    show(await api.get("/v1/sessions/current"));
  } catch (error) {
    if (error.status === 404 && shown && OPEN_STATES.has(shown.state)) {
      show(await api.get(`/v1/sessions/${encodeURIComponent(shown.id)}`).catch(() => null));
    }
  }
}

async function start() {
  try {
    show(await api.get("/v1/sessions/current"));
  } catch (error) {
    if (error.status === 401) return;
    if (error.status !== 404) {
      notice(error);
      setTimeout(start, 3000);
      return;
    }
  }
  ui.started = true;
  render();
}

api.onUnauthorized = () => {
  ui.locked = true;
  render();
};

$("use-phone").addEventListener("click", openPhone);
$("sale-phone").addEventListener("click", openPhone);
$("phone-cancel").addEventListener("click", closePhone);
$("phone-ok").addEventListener("click", submitPhone);
$("phone-mine").addEventListener("change", () => ui.phone && renderPhone());
$("keypad").addEventListener("click", (event) => {
  const key = event.target.closest("button")?.dataset.key;
  if (key) pressKey(key);
});
$("payment-cancel").addEventListener("click", cancelPayment);
$("sale-cancel").addEventListener("click", () => current() && cancelSale(current()));
$("failure-cancel").addEventListener("click", () => current() && cancelSale(current()));
$("failure-retry").addEventListener("click", () => {
  const payment = current()?.payment;
  if (payment) ui.seenFailures.add(payment.out_trade_no);
  render();
});
for (const kind of ["pointerdown", "keydown"]) document.addEventListener(kind, touch, { capture: true });

api.follow("/v1/events", EVENT_TYPES, onEvent, (up) => {
  document.body.dataset.live = String(up);
  if (up) resync(); // what happened while the stream was not connected
});
// The event stream is the fast path; this slow look catches anything it dropped.
setInterval(() => { if (!ui.locked) resync(); }, 3000);
refreshStation();
setInterval(refreshStation, 10_000);
setInterval(tick, 250);
start();
