// The shopper's self-checkout screen. It follows the station's sale over server-sent events and shows one
// screen at a time: idle → (phone keypad) → sale → waiting for the phone → success / failure / cancelled, or
// "please ask staff" for a part-paid sale left behind. What is on screen is decided from the sale as the agent
// last described it (`screenName`), plus the few things only this screen knows: the keypad, a failed payment
// the shopper has seen, a sale handed to the staff. Each screen is drawn by its own small function (`SCREENS`).
//
// One language at a time, Chinese first. Every text is in TEXTS (index.html names its static ones with
// `data-t`); the 中文/English button switches, and the next shopper starts in Chinese again.
//
// Idle: after IDLE_S without a touch or a key an open sale asks "还在吗？" for PROMPT_S seconds; unanswered, the
// screen is cleared for the next shopper and the sale cancelled if nothing was paid. The count stands still while
// a payment is in progress. It runs on Date.now and one interval, so a test drives it with a fake clock.
//
// Open it as /kiosk/#token=<api.token>; options may follow in the fragment: `&idle=120` (seconds without
// activity before the prompt), `&countdown=20` (seconds the prompt waits), `&final=10` (seconds on the success
// and cancelled screens).
import { Api, EVENT_TYPES, OPEN_STATES, PAID_STATES, forgetAllButToken, h, readFragment, yuan } from "/shared/api.js";

const { token, options } = readFragment();
const api = new Api(token);
const seconds = (name, fallback) => {
  const value = Number(options.get(name));
  return Number.isFinite(value) && value > 0 ? value : fallback;
};
const IDLE_S = seconds("idle", 120); // an open sale nobody touches for this long asks "still there?"
const PROMPT_S = seconds("countdown", 20); // ... for this long, then it is cleared
const FINAL_S = seconds("final", 10); // success and cancelled screens stay this long, then idle
const NOTICE_S = 8;
const POLL_MS = 3000;

const IN_PROGRESS = new Set(["sending", "PENDING", "USERPAYING", "UNKNOWN", "REVERSING"]);
const FAILED = new Set(["FAILED", "REVERSED"]);
const COUNTING_SCREENS = new Set(["phone", "sale", "failure"]); // where a shopper can walk away mid-sale

// --- texts ---------------------------------------------------------------------------------------------------

const LANGS = { zh: "zh-CN", en: "en" };

/** Every text the shopper reads, in both languages; a function takes the numbers it shows. */
const TEXTS = {
  langName: { zh: "中文", en: "English" },
  title: { zh: "自助收银", en: "Self checkout" },
  offline: {
    zh: "网络中断：仅支持现金/银行卡，请到人工收银台付款",
    en: "Network down: cash and bank card only, please pay at a staffed till",
  },
  starting: { zh: "正在启动…", en: "Starting…" },
  locked: { zh: "此屏幕需要本机的 API 令牌", en: "This screen needs the station's API token" },
  lockedHint: {
    zh: "请以 /kiosk/#token=… 打开此页面，令牌为本机的 api.token（POS_EDGE_API__TOKEN）。",
    en: "Open it as /kiosk/#token=… with the station's api.token (POS_EDGE_API__TOKEN).",
  },
  // idle
  scanPrompt: { zh: "请扫描会员码或付款码", en: "Scan your member code or payment code" },
  step1: { zh: "扫描会员码，或使用手机号（可选）", en: "Scan your member code, or use your phone number (optional)" },
  step2: { zh: "扫描商品", en: "Scan your items" },
  step3: { zh: "出示付款码完成支付", en: "Show your payment code to pay" },
  usePhone: { zh: "使用手机号", en: "Use phone number" },
  // phone keypad
  phoneTitle: { zh: "请输入手机号", en: "Enter your mobile number" },
  keypad: { zh: "数字键盘", en: "Keypad" },
  clear: { zh: "清除", en: "Clear" },
  delete: { zh: "删除", en: "Delete" },
  phoneMine: { zh: "这是我的手机号", en: "This is my number" },
  back: { zh: "返回", en: "Back" },
  confirm: { zh: "确认", en: "Confirm" },
  phoneNotFound: { zh: "未能识别此手机号", en: "This number was not recognised" },
  // the sale
  member: { zh: "会员", en: "Member" },
  pointsBalance: { zh: (n) => `积分 ${n}`, en: (n) => `${n} points` },
  item: { zh: "商品", en: "Item" },
  qty: { zh: "数量", en: "Qty" },
  amount: { zh: "金额", en: "Amount" },
  noLines: { zh: "请扫描商品，或等待店员录入", en: "Scan your items, or wait for the staff to enter them" },
  subtotal: { zh: "小计", en: "Subtotal" },
  memberDiscount: { zh: "会员折扣", en: "Member discount" },
  coupons: { zh: "优惠券", en: "Coupons" },
  pointsRedeemed: { zh: (n) => `积分抵扣 ${n}`, en: (n) => `${n} points used` },
  paidSoFar: { zh: "已付", en: "Paid" },
  earns: { zh: (n) => `本单可得 ${n} 积分`, en: (n) => `This sale earns ${n} points` },
  provisional: { zh: "（暂计，联网后确认）", en: " (provisional until the store is back online)" },
  usePoints: { zh: (n) => `使用 ${n} 积分`, en: (n) => `Use ${n} points` },
  dontUsePoints: { zh: "不使用积分", en: "Don't use points" },
  toPay: { zh: "应付", en: "To pay" },
  showPayCode: { zh: "请出示付款码", en: "Show your payment code" },
  showPayCodeHow: { zh: "将手机上的付款码对准扫码窗口", en: "Hold the payment code on your phone to the scanner" },
  payAtTill: { zh: "请到人工收银台用现金或银行卡付款", en: "Please pay by cash or bank card at a staffed till" },
  cancelSale: { zh: "取消交易", en: "Cancel sale" },
  // paying
  confirmOnPhone: { zh: "请在手机上确认支付", en: "Confirm the payment on your phone" },
  processing: { zh: "正在支付，请稍候", en: "Processing the payment" },
  cancellingPayment: { zh: "正在取消支付…", en: "Cancelling the payment…" },
  cancelPayment: { zh: "取消支付", en: "Cancel payment" },
  paymentCancelled: { zh: "支付已取消", en: "Payment cancelled" },
  paymentNotCompleted: { zh: "支付未成功", en: "Payment not completed" },
  paymentFailed: { zh: "支付未成功，请重试或换一种方式付款", en: "The payment did not go through." },
  tryAgain: { zh: "重新付款", en: "Try again" },
  // the end
  paid: { zh: "支付成功，谢谢惠顾", en: "Paid, thank you" },
  pointsEarned: { zh: "本次获得积分", en: "Points earned" },
  pointsUsed: { zh: "本次使用积分", en: "Points used" },
  newBalance: { zh: "积分余额", en: "New balance" },
  provisionalNote: { zh: "* 暂计，联网后确认", en: "* provisional until the store is back online" },
  change: { zh: "找零", en: "Change" },
  receiptNo: { zh: "小票号", en: "Receipt no." },
  cancelled: { zh: "交易已取消", en: "Sale cancelled" },
  askStaff: { zh: "请联系店员", en: "Please ask staff" },
  askStaffWhy: { zh: "本单已有付款，店员会为您处理", en: "Part of this sale is paid: a member of staff will finish it" },
  // still there?
  stillThere: { zh: "还在吗？", en: "Are you still there?" },
  idleClears: { zh: "秒后将清空本次交易", en: "seconds until this checkout is cleared" },
  continue: { zh: "继续", en: "Continue" },
};

// English beside the store's own Chinese tier name (`member.tier_name`, from the agent's settings).
const TIERS_EN = {
  normal: "Member", regular: "Member", member: "Member", silver: "Silver", gold: "Gold", platinum: "Platinum",
  diamond: "Diamond",
};

let lang = "zh";

/** The text `key` in the shopper's language. */
function t(key, ...args) {
  const entry = TEXTS[key];
  if (!entry) return key;
  const text = entry[lang] ?? entry.zh;
  return typeof text === "function" ? text(...args) : text;
}

/** The agent's own words (its Chinese `zh`, its English `en`) in the shopper's language, or the other one. */
function said(zh, en) {
  return (lang === "en" ? en || zh : zh || en) || "";
}

/** Switches every text on the page; the screens are drawn again by the caller. */
function setLanguage(next) {
  lang = next;
  document.documentElement.lang = LANGS[lang];
  document.title = t("title");
  for (const node of document.querySelectorAll("[data-t]")) node.textContent = t(node.dataset.t);
  for (const node of document.querySelectorAll("[data-t-label]")) node.setAttribute("aria-label", t(node.dataset.tLabel));
  const other = lang === "zh" ? "en" : "zh";
  const button = $("lang");
  button.textContent = TEXTS.langName[other];
  button.lang = LANGS[other];
}

function switchLanguage() {
  setLanguage(lang === "zh" ? "en" : "zh");
  render();
  renderNotice();
}

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
  staffHold: null, // id of a part-paid sale left by its shopper: the staff finish it
  notice: null, // { what, kind } shown over the screen
  screen: "starting",
  screenSince: Date.now(),
};

const idle = {
  since: Date.now(), // the last touch, key or news of the sale
  prompt: false, // "still there?" is up
  returnFocus: null, // where the keyboard's focus was before it
};

// --- the sale ------------------------------------------------------------------------------------------------

function current() {
  const s = ui.session;
  return s && s.id !== ui.dismissed ? s : null;
}

const isOpen = (s) => Boolean(s) && OPEN_STATES.has(s.state);
const paying = (s) => isOpen(s) && IN_PROGRESS.has(s.payment?.state);
const moneyTaken = (s) => (s.tenders ?? []).length > 0 || (s.paid_fen ?? 0) > 0;

function show(session) {
  if (!session || !session.id) return session;
  const old = ui.session;
  if (old && old.id === session.id && (session.version ?? 0) < (old.version ?? 0)) return old;
  if (session.id === ui.dismissed && !isOpen(session)) {
    // Late news of a sale no longer shown: only how it ended is kept, none of its shopper's data.
    ui.session = { id: session.id, version: session.version, state: session.state };
    return session;
  }
  if (ui.finished.has(session.id) && isOpen(session)) return old; // paid or cancelled is final
  if (!isOpen(session)) ui.finished.add(session.id);
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
  if (ui.phone && (!s || (isOpen(s) && !s.member))) return "phone";
  if (!s) return ui.started ? "idle" : "starting";
  if (s.state === "cancelled") return "cancelled";
  if (PAID_STATES.has(s.state)) return "success";
  const payment = s.payment;
  const mine = payment && ui.cancelledHere.has(payment.out_trade_no);
  if (paying(s) && !mine) return "waiting";
  if (ui.staffHold === s.id) return "staff";
  if (payment && FAILED.has(payment.state) && !mine && !ui.seenFailures.has(payment.out_trade_no)) return "failure";
  return "sale";
}

// --- screens -------------------------------------------------------------------------------------------------

/** The screens with something to draw from the sale (the others are all static text). */
const SCREENS = {
  phone: renderPhone,
  sale: renderSale,
  waiting: renderWaiting,
  failure: renderFailure,
  success: renderSuccess,
};

function render() {
  const name = screenName();
  const changed = name !== ui.screen;
  if (changed) {
    ui.screen = name;
    ui.screenSince = Date.now();
  }
  document.body.dataset.screen = name;
  for (const section of document.querySelectorAll(".screen")) section.hidden = section.id !== `screen-${name}`;
  const s = current();
  const online = s ? s.online : ui.stationOnline;
  $("offline").hidden = online !== false || name === "locked";
  if (name === "phone" || s) SCREENS[name]?.(s);
  if (name === "failure" || name === "locked") hideNotice();
  document.body.dataset.idle = idleMode();
  if (changed) keepFocus();
}

/** A keyboard user never loses their place: focus left on a screen that went away moves to the new one's title. */
function keepFocus() {
  const focused = document.activeElement;
  if (focused && focused !== document.body && !focused.closest("[hidden]")) return;
  const title = document.querySelector(`#screen-${ui.screen} h2`);
  if (!title || idle.prompt) return;
  title.tabIndex = -1;
  title.focus({ preventScroll: true });
}

function tierLabel(member) {
  const tier = member.tier;
  const name = lang === "en" ? TIERS_EN[tier] ?? member.tier_name ?? tier : member.tier_name || tier;
  return h("span", { className: "tier", dataset: { tier } }, name);
}

function renderMember(member) {
  const box = $("member");
  box.hidden = !member;
  if (!member) return box.replaceChildren();
  box.replaceChildren(
    h("span", { className: "name" }, member.display_name || member.phone_masked || t("member")),
    tierLabel(member),
    h("span", { className: "balance" }, t("pointsBalance", member.points ?? 0)),
  );
}

function pricingRow(label, value, className = "") {
  return [h("dt", { className }, label), h("dd", { className }, value)];
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
    h("td", {}, line.name || line.sku, line.qty > 1 ? h("span", { className: "unit" }, yuan(line.unit_price_fen)) : ""),
    h("td", { className: "num" }, `×${line.qty}`),
    h("td", { className: "num" }, yuan(line.amount_fen ?? line.qty * line.unit_price_fen)),
  )));
  $("no-lines").hidden = lines.length > 0;

  const p = s.pricing ?? {};
  const rows = [];
  if (lines.length) rows.push(...pricingRow(t("subtotal"), yuan(p.subtotal_fen)));
  if (p.tier_discount_fen) rows.push(...pricingRow(t("memberDiscount"), `-${yuan(p.tier_discount_fen)}`, "discount"));
  if (p.coupon_discount_fen) rows.push(...pricingRow(t("coupons"), `-${yuan(p.coupon_discount_fen)}`, "discount"));
  if (p.points_redeemed) {
    rows.push(...pricingRow(t("pointsRedeemed", p.points_redeemed), `-${yuan(p.points_value_fen)}`, "discount"));
  }
  if (s.paid_fen) rows.push(...pricingRow(t("paidSoFar"), yuan(s.paid_fen)));
  $("pricing").replaceChildren(...rows);

  $("coupons").replaceChildren(...(s.coupons ?? []).map((coupon) => h("div", { className: "coupon" },
    h("span", {}, coupon.title || coupon.code), h("span", { className: "discount" }, `-${yuan(coupon.amount_off_fen)}`))));

  renderRedeem(s, lines.length > 0);

  const earn = $("earn");
  const earned = s.points?.earned ?? p.points_earned ?? 0;
  earn.hidden = !s.member || !lines.length;
  earn.replaceChildren(t("earns", earned),
    s.online === false ? h("span", { className: "provisional" }, t("provisional")) : "");

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
    ? h("button", { type: "button", className: "secondary", id: "redeem-none", onclick: () => redeem(s, 0) }, t("dontUsePoints"))
    : h("button", { type: "button", id: "redeem-use", onclick: () => redeem(s, most) }, t("usePoints", most));
  box.replaceChildren(button);
}

function renderWaiting(s) {
  const payment = s.payment ?? {};
  const onPhone = payment.state === "USERPAYING";
  $("waiting-title").textContent = t(onPhone ? "confirmOnPhone" : "processing");
  $("waiting-amount").textContent = yuan(payment.amount_fen ?? s.remaining_fen);
  let state = "";
  if (payment.state === "REVERSING") state = t("cancellingPayment");
  else if (!onPhone && payment.message_zh) state = said(payment.message_zh, payment.message);
  $("waiting-state").textContent = state;
  $("payment-cancel").disabled = payment.state === "REVERSING";
}

function renderFailure(s) {
  const payment = s.payment ?? {};
  const refusal = ui.refusal?.session_id === s.id ? ui.refusal : {};
  $("failure-reason").textContent =
    said(payment.message_zh || refusal.zh, payment.message || refusal.en) || t("paymentFailed");
}

function renderSuccess(s) {
  $("paid-amount").textContent = yuan(s.paid_fen || s.pricing?.amount_due_fen);
  const rows = [];
  if (s.member) {
    const points = s.points ?? {};
    const mark = s.online === false ? " *" : "";
    rows.push(...pricingRow(t("pointsEarned"), `+${points.earned ?? s.pricing?.points_earned ?? 0}${mark}`, "earned"));
    if (points.redeemed) rows.push(...pricingRow(t("pointsUsed"), `-${points.redeemed}`));
    if (points.balance !== undefined && points.balance !== null) {
      rows.push(...pricingRow(t("newBalance"), `${points.balance}${mark}`, "balance"));
    }
    if (mark) rows.push(h("dd", { className: "provisional" }, t("provisionalNote")));
  }
  if (s.change_fen) rows.push(...pricingRow(t("change"), yuan(s.change_fen)));
  $("success-points").replaceChildren(...rows);
  $("receipt-no").textContent = s.receipt_no ?? "—";
}

// --- actions -------------------------------------------------------------------------------------------------

const sessionPath = (id, step = "") => `/v1/sessions/${encodeURIComponent(id)}${step}`;

async function ensureSale() {
  const s = current();
  if (isOpen(s)) return { session: s, opened: false };
  try {
    return { session: show(await api.post("/v1/sessions", {})), opened: true };
  } catch (error) {
    if (error.code === "sale_open" && error.body.session_id) {
      return { session: show(await api.get(sessionPath(error.body.session_id))), opened: false };
    }
    throw error;
  }
}

async function cancelSale(session, { quiet = false } = {}) {
  try {
    const after = await api.post(sessionPath(session.id, "/cancel"));
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
    show(await api.post(sessionPath(s.id, "/payment/cancel")));
    notice({ key: "paymentCancelled" }, "info");
  } catch (error) {
    ui.cancelledHere.delete(s.payment.out_trade_no);
    render();
    notice(error);
  }
}

async function redeem(s, points) {
  try {
    show(await api.put(sessionPath(s.id, "/redemption"), { points }));
  } catch (error) {
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
  $("phone-display").replaceChildren();
  const s = current();
  // A sale this keypad opened and nothing went into: take it away again.
  if (s && s.id === opened && isOpen(s) && !s.member && !(s.lines ?? []).length) cancelSale(s, { quiet: true });
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
  if (!ui.phone || $("phone-ok").disabled) return;
  const entry = ui.phone;
  $("phone-ok").disabled = true;
  try {
    const { session, opened } = await ensureSale();
    if (opened) entry.openedSession = session.id;
    const after = await api.post(sessionPath(session.id, "/phone"), { phone: entry.digits, confirmed: true });
    entry.digits = "";
    if (ui.phone === entry) ui.phone = null;
    show(after);
  } catch (error) {
    const box = $("phone-error");
    box.textContent = said(error.messageZh, error.message) || t("phoneNotFound");
    box.hidden = false;
    if (ui.phone) renderPhone();
  }
}

/** The keyboard does what the touch screen does: digits, Backspace and Delete on the keypad, Enter to confirm,
 *  Escape to go back or to answer "still there?". Buttons take Enter and Space themselves. */
function onKey(event) {
  if (event.ctrlKey || event.altKey || event.metaKey) return;
  if (idle.prompt) {
    if (event.key === "Escape") stillHere();
    return;
  }
  if (ui.screen !== "phone") return;
  const onControl = event.target instanceof Element && event.target.closest("button, input");
  const key = event.key;
  if (/^\d$/.test(key)) pressKey(key);
  else if (key === "Backspace") pressKey("back");
  else if (key === "Delete") pressKey("clear");
  else if (key === "Escape") closePhone();
  else if (key === "Enter" && !onControl) submitPhone();
  else return;
  event.preventDefault();
}

// --- idle: still there? --------------------------------------------------------------------------------------

function touch() {
  idle.since = Date.now();
}

/** "off" (no shopper's sale to leave behind), "paused" (a payment is in progress) or "counting". */
function idleMode() {
  if (paying(current())) return "paused";
  return COUNTING_SCREENS.has(ui.screen) ? "counting" : "off";
}

function idleTick(now) {
  const mode = idleMode();
  document.body.dataset.idle = mode;
  if (mode !== "counting") {
    idle.since = now; // the count starts again once the payment has ended
    hidePrompt();
    return;
  }
  const quiet = now - idle.since;
  if (quiet < IDLE_S * 1000) {
    hidePrompt();
    return;
  }
  const left = (IDLE_S + PROMPT_S) * 1000 - quiet;
  if (left > 0) showPrompt(Math.ceil(left / 1000));
  else timeOut();
}

function showPrompt(left) {
  $("idle-seconds").textContent = String(left);
  if (idle.prompt) return;
  idle.prompt = true;
  idle.returnFocus = document.activeElement;
  $("idle-prompt").hidden = false;
  document.querySelector("main").inert = true;
  $("idle-continue").focus();
}

function hidePrompt() {
  if (!idle.prompt) return;
  idle.prompt = false;
  $("idle-prompt").hidden = true;
  document.querySelector("main").inert = false;
  const back = idle.returnFocus;
  idle.returnFocus = null;
  if (back && back !== document.body && back.isConnected && !back.closest("[hidden]")) back.focus({ preventScroll: true });
  else keepFocus();
}

function stillHere() {
  touch();
  hidePrompt();
}

/** Nobody answered "still there?": the screen is made ready for the next shopper. A sale with nothing paid is
 *  cancelled; one with money taken is left to the staff (cancelling it is a void, which may need a supervisor:
 *  the agent answers 403 approval_required). */
async function timeOut() {
  touch();
  hidePrompt();
  const s = current();
  ui.phone = null;
  if (!isOpen(s)) {
    clearForNextShopper();
    render();
    return;
  }
  if (moneyTaken(s)) {
    holdForStaff(s);
    return;
  }
  ui.dismissed = s.id;
  clearForNextShopper();
  render();
  try {
    show(await api.post(sessionPath(s.id, "/cancel")));
  } catch (error) {
    if (error.status !== 404) holdForStaff(s); // refused (money was taken meanwhile) or not answered
  }
}

function holdForStaff(s) {
  ui.staffHold = s.id;
  if (ui.dismissed === s.id) ui.dismissed = null;
  if (ui.session?.id !== s.id) ui.session = s;
  clearForNextShopper();
  render();
}

/** Nothing of the last shopper stays: their data leaves the page and the browser's storage (the station's
 *  token stays), notices go, and the screen speaks Chinese again. */
function clearForNextShopper() {
  for (const node of document.querySelectorAll("[data-customer]")) node.replaceChildren();
  $("member").hidden = true;
  $("phone-error").hidden = true;
  $("phone-mine").checked = false;
  hideNotice();
  ui.refusal = null;
  forgetAllButToken();
  setLanguage("zh");
}

function tick() {
  const now = Date.now();
  const s = current();
  if ((ui.screen === "success" || ui.screen === "cancelled") && now - ui.screenSince >= FINAL_S * 1000) {
    ui.dismissed = s?.id ?? null;
    if (s) ui.session = { id: s.id, version: s.version, state: s.state }; // none of its shopper's data
    clearForNextShopper();
    render();
  }
  idleTick(now);
}

// --- notices -------------------------------------------------------------------------------------------------

let noticeTimer = null;

/** A short message over the current screen: an ApiError, an event's message, or `{ key }` of TEXTS. */
function notice(what, kind = "error") {
  ui.notice = { what, kind };
  if (!renderNotice()) return;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(hideNotice, NOTICE_S * 1000);
}

function renderNotice() {
  const box = $("notice");
  if (!ui.notice) return false;
  const { what, kind } = ui.notice;
  const text = what.key ? t(what.key) : said(what.messageZh ?? what.message_zh ?? what.zh, what.en ?? what.message);
  if (!text) return false;
  box.className = `notice ${kind}`;
  box.textContent = text;
  box.hidden = false;
  return true;
}

function hideNotice() {
  ui.notice = null;
  $("notice").hidden = true;
}

// --- the agent: events, status, start ------------------------------------------------------------------------

function onEvent(type, data) {
  const s = data.session;
  if (type === "message") {
    ui.refusal = { session_id: s?.id ?? null, zh: data.message_zh ?? null, en: data.message ?? "" };
    notice({ zh: data.message_zh ?? null, en: data.message ?? "" });
  }
  if (s) show(s);
  if (type === "status") poll().catch(() => {});
}

/** The station as the agent describes it: online or not, the store's name, and its open sale, read by id. Asking
 *  for /v1/sessions/current instead would answer 404 whenever no sale is open, an error in the browser's log. */
async function poll() {
  const status = await api.get("/v1/status");
  ui.stationOnline = status.checkout?.online ?? null;
  $("store").textContent = status.store_name ?? "";
  const open = status.checkout?.open_session ?? null;
  const shown = ui.session;
  if (open) show(await api.get(sessionPath(open)));
  if (shown && shown.id !== open && isOpen(shown)) {
    // The sale last seen open has ended since (paid, cancelled): how, once.
    try {
      show(await api.get(sessionPath(shown.id)));
    } catch (error) {
      if (error.status === 404 && ui.session === shown) ui.session = null; // the agent no longer knows it
    }
  }
  render();
}

async function start() {
  try {
    await poll();
  } catch (error) {
    if (error.status === 401) return;
    notice(error);
    setTimeout(start, 3000);
    return;
  }
  ui.started = true;
  render();
}

api.onUnauthorized = () => {
  ui.locked = true;
  render();
};

$("lang").addEventListener("click", switchLanguage);
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
$("idle-continue").addEventListener("click", stillHere);
for (const kind of ["pointerdown", "keydown"]) document.addEventListener(kind, touch, { capture: true });
document.addEventListener("keydown", onKey);

setLanguage("zh");
api.follow("/v1/events", EVENT_TYPES, onEvent, (up) => {
  document.body.dataset.live = String(up);
  if (up && ui.started) poll().catch(() => {}); // what happened while the stream was not connected
});
// The event stream is the fast path; this slow look catches anything it dropped.
setInterval(() => { if (ui.started && !ui.locked) poll().catch(() => {}); }, POLL_MS);
setInterval(tick, 250);
start();
