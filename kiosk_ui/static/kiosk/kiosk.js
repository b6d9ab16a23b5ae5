// The shopper's self-checkout screen. It follows the station's sale over server-sent events and shows one
// screen at a time: idle → (phone keypad) → sale → waiting for the phone → success / failure / cancelled, or
// "please ask staff" for a part-paid sale left behind. What is on screen is decided from the sale as the agent
// last described it (`screenName`), plus the few things only this screen knows: the keypad, a failed payment
// the shopper has seen, a sale handed to the staff. Each screen is drawn by its own small function (`SCREENS`).
// From idle the customer may also join (加入会员: number, privacy notice and consent, welcome) or see their
// membership (我的会员: a scan or a typed number, then points, coupons, last receipts); a payer who is not a
// member is offered to join with the payment just made (支付即会员). These flows sit in `ui.join` and `ui.wallet`,
// apart from the sale, and a scan that opens a sale ends them.
//
// One language at a time, Chinese first. Every text is in TEXTS (index.html names its static ones with
// `data-t`); the 中文/English button switches, and the next shopper starts in Chinese again.
//
// Idle: after IDLE_S without a touch or a key an open sale asks "还在吗？" for PROMPT_S seconds; unanswered, the
// screen is cleared for the next shopper and the sale cancelled if nothing was paid. The count stands still while
// a payment is in progress; the join and wallet screens are cleared the same way. It runs on Date.now and one
// interval, so a test drives it with a fake clock.
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
// Where a shopper can walk away: mid-sale, or with their membership on the screen.
const COUNTING_SCREENS = new Set(["phone", "sale", "failure", "join", "joined", "listen", "wallet"]);
const POINTS_STEP = 100; // the points stepper moves by this much (the last step stops at the most allowed)
const PHONE = /^1[3-9]\d{9}$/;

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
  myMembership: { zh: "我的会员", en: "My membership" },
  join: { zh: "加入会员", en: "Join" },
  // phone keypad
  phoneTitle: { zh: "请输入手机号", en: "Enter your mobile number" },
  keypad: { zh: "数字键盘", en: "Keypad" },
  clear: { zh: "清除", en: "Clear" },
  delete: { zh: "删除", en: "Delete" },
  phoneMine: { zh: "这是我的手机号", en: "This is my number" },
  back: { zh: "返回", en: "Back" },
  confirm: { zh: "确认", en: "Confirm" },
  phoneNotFound: { zh: "未能识别此手机号", en: "This number was not recognised" },
  joinNow: { zh: "立即加入", en: "Join now" },
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
  lessQty: { zh: "减少一件", en: "One fewer" },
  moreQty: { zh: "增加一件", en: "One more" },
  removeLine: { zh: "删除此商品", en: "Remove this item" },
  autoCoupon: { zh: "已自动使用", en: "applied for you" },
  needHelp: { zh: "扫不出来？需要帮助", en: "Can't scan it? Get help" },
  helpComing: { zh: "已呼叫店员，请稍候", en: "A member of staff is on the way" },
  helpWave: { zh: "请向附近的店员示意", en: "Please wave to a member of staff nearby" },
  usePointsUpTo: { zh: (n) => `使用积分（最多 ${n}）`, en: (n) => `Use points (up to ${n})` },
  choosePoints: { zh: "选择要使用的积分", en: "How many points to use" },
  fewerPoints: { zh: "少用积分", en: "Fewer points" },
  morePoints: { zh: "多用积分", en: "More points" },
  allPoints: { zh: (n) => `全部 ${n}`, en: (n) => `All ${n}` },
  cancel: { zh: "取消", en: "Cancel" },
  next: { zh: "下一步", en: "Next" },
  confirmPoints: { zh: (n) => `确认使用 ${n} 积分抵扣本单？`, en: (n) => `Use ${n} points on this sale?` },
  confirmUse: { zh: "确认使用", en: "Use them" },
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
  receiptPrinted: { zh: "小票已打印，请取走", en: "Your receipt is printed: please take it" },
  eReceipt: { zh: "扫码查看电子小票", en: "Scan for your e-receipt" },
  payJoinTitle: { zh: "支付即会员", en: "Join with this payment" },
  payJoinWhy: {
    zh: "用刚才付款的微信或支付宝加入会员",
    en: "Become a member with the WeChat or Alipay account you just paid with",
  },
  cancelled: { zh: "交易已取消", en: "Sale cancelled" },
  askStaff: { zh: "请联系店员", en: "Please ask staff" },
  askStaffWhy: { zh: "本单已有付款，店员会为您处理", en: "Part of this sale is paid: a member of staff will finish it" },
  // still there?
  stillThere: { zh: "还在吗？", en: "Are you still there?" },
  idleClears: { zh: "秒后将清空本次交易", en: "seconds until this checkout is cleared" },
  idleClearsScreen: { zh: "秒后将返回首页", en: "seconds until the screen is cleared" },
  continue: { zh: "继续", en: "Continue" },
  // joining
  joinTitle: { zh: "加入会员", en: "Join" },
  joinPhoneTitle: { zh: "请输入手机号加入会员", en: "Enter your mobile number to join" },
  phoneLabel: { zh: "手机号", en: "Mobile" },
  privacy: { zh: "隐私说明", en: "Privacy notice" },
  consent: { zh: "我已阅读并同意以上隐私说明", en: "I have read and agree to the privacy notice above" },
  joinSubmit: { zh: "同意并加入", en: "Agree and join" },
  welcome: { zh: "欢迎加入会员！", en: "Welcome, you are a member now!" },
  welcomePoints: { zh: (n) => `赠送 ${n} 积分`, en: (n) => `${n} welcome points` },
  saveInWechat: {
    zh: "保存到微信：用微信扫一扫此码，保存您的会员卡",
    en: "Save it in WeChat: scan this code with your phone to keep your member card",
  },
  alreadyMember: { zh: "该手机号已是会员", en: "This number is already a member's" },
  alreadyHow: { zh: "如果这是您的手机号，可以查看您的会员信息", en: "If this number is yours, you can see your membership" },
  showMyWallet: { zh: "查看我的会员", en: "Show my membership" },
  joinFailed: { zh: "暂时无法加入", en: "Joining is not possible now" },
  joinOffline: {
    zh: "网络中断，暂时无法办理入会，请稍后再试或到收银台办理",
    en: "The network is down, so joining is not possible now: please try later or at a staffed till",
  },
  done: { zh: "完成", en: "Done" },
  // the wallet
  walletPrompt: {
    zh: "请扫描会员码或付款码，或输入手机号",
    en: "Scan your member code or payment code, or enter your mobile number",
  },
  walletPhoneTitle: { zh: "请输入手机号查看会员", en: "Enter your mobile number" },
  enterPhone: { zh: "输入手机号", en: "Enter mobile number" },
  notMemberJoin: { zh: "还不是会员？加入会员", en: "Not a member yet? Join" },
  close: { zh: "关闭", en: "Close" },
  points: { zh: "积分", en: "Points" },
  pointsPending: { zh: (n) => `含待确认 ${n} 积分`, en: (n) => `including ${n} points not confirmed yet` },
  noCoupons: { zh: "暂无可用的优惠券", en: "No coupons to use now" },
  validUntil: { zh: (d) => `有效期至 ${d}`, en: (d) => `Valid until ${d}` },
  threshold: { zh: (y) => `满${y}可用`, en: (y) => `on ${y} or more` },
  percentOff: { zh: (p) => `${(100 - p) / 10}折`, en: (p) => `${p}% off` },
  lastReceipts: { zh: "最近小票", en: "Last receipts" },
  noReceipts: { zh: "暂无小票", en: "No receipts yet" },
  eReceiptLink: { zh: "电子小票", en: "E-receipt" },
  pointsPlus: { zh: (n) => `+${n} 积分`, en: (n) => `+${n} points` },
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

/** Gives `node` the text `key` of TEXTS, and keeps it in the shopper's language when they switch. */
function setText(node, key) {
  node.dataset.t = key;
  node.textContent = t(key);
}

/** The agent's Chinese for the customer when it gave one; else (and in English) our own text `key`. */
function agentSaid(zh, key) {
  return lang === "zh" && zh ? zh : t(key);
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
  phone: null, // { digits, purpose: "identify" | "join" | "wallet", openedSession, notFound } while the keypad is up
  join: null, // { step: "notice" | "joined" | "already" | "failed", phone, notice, sessionId, result, reason }
  wallet: null, // { listenUntil } while waiting for a scan, then { data } (the agent's wallet, masked)
  redeem: null, // { sessionId, points, step: "choose" | "check" } while the shopper chooses points to spend
  eReceipt: null, // { id, url, svg } of the sale just paid
  eReceiptAsked: null, // the sale whose e-receipt was asked for
  printed: new Set(), // ids of sales whose receipt has printed
  storeTimezone: "Asia/Shanghai", // GET /v1/status: every time is shown in store time
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
  if (!old || old.id !== session.id) {
    ui.dismissed = null;
    ui.redeem = null;
    if (isOpen(session)) endMemberFlows(); // a scan started a sale: the shopper is shopping now
  }
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
  if (ui.phone && (ui.phone.purpose !== "identify" || !s || (isOpen(s) && !s.member))) return "phone";
  if (ui.join) return ui.join.step === "notice" ? "join" : "joined";
  if (ui.wallet) return ui.wallet.data ? "wallet" : "listen";
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
  join: renderJoin,
  joined: renderJoined,
  wallet: renderWallet,
};
const DRAWN_WITHOUT_SALE = new Set(["phone", "join", "joined", "wallet"]);

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
  if (DRAWN_WITHOUT_SALE.has(name) || s) SCREENS[name]?.(s);
  if (name === "failure" || name === "locked") hideNotice();
  document.body.dataset.idle = idleMode();
  document.body.dataset.version = s ? String(s.version ?? "") : ""; // the sale's version on screen (tests wait on it)
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
  const editable = isOpen(s) && s.state !== "tender" && !moneyTaken(s) && !paying(s);
  redraw($("lines"), lines.map((line, index) => h("tr", {},
    h("td", {}, line.name || line.sku, line.qty > 1 ? h("span", { className: "unit" }, yuan(line.unit_price_fen)) : ""),
    h("td", { className: "num qty" }, editable ? lineControls(line, index) : `×${line.qty}`),
    h("td", { className: "num" }, yuan(line.amount_fen ?? line.qty * line.unit_price_fen)),
  )));
  $("no-lines").hidden = lines.length > 0;
  const refusal = ui.refusal;
  const alert = $("sale-alert");
  alert.hidden = !(refusal && refusal.session_id === s.id && refusal.version === s.version);
  alert.textContent = alert.hidden ? "" : said(refusal.zh, refusal.en);

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
    h("span", {}, coupon.title || coupon.code, coupon.auto ? h("span", { className: "auto" }, t("autoCoupon")) : ""),
    h("span", { className: "discount" }, `-${yuan(coupon.amount_off_fen)}`))));

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

/** − and + for a line's quantity, and taking it off; weighed goods (a quantity that is not whole) only come off. */
function lineControls(line, index) {
  const whole = Number.isInteger(line.qty);
  const step = (focus, label, text, qty, disabled = false) => h("button", {
    type: "button", className: "secondary step", dataset: { focus }, "aria-label": t(label), disabled,
    onclick: () => setQuantity(index, qty),
  }, text);
  return h("span", { className: "qty-controls" },
    whole ? step(`less-${index}`, "lessQty", "−", line.qty - 1, line.qty <= 1) : "",
    h("span", { className: "qty-value" }, whole ? String(line.qty) : `×${line.qty}`),
    whole ? step(`more-${index}`, "moreQty", "+", line.qty + 1, line.qty >= 999) : "",
    step(`remove-${index}`, "removeLine", "✕", 0),
  );
}

/** Draws `box`'s children again without losing the keyboard's place: the control focused in it before (named by
 *  `data-focus`) has the focus again. */
function redraw(box, children) {
  const focused = box.contains(document.activeElement) ? document.activeElement.dataset.focus : null;
  box.replaceChildren(...children);
  if (focused) box.querySelector(`[data-focus="${focused}"]`)?.focus({ preventScroll: true });
}

/** Points are spent only as the shopper chooses: "use points" opens a stepper (nothing chosen yet), "next" asks
 *  once more with the number, and only "use them" sends it. */
function renderRedeem(s, hasLines) {
  const box = $("redeem");
  const member = s.member;
  const used = s.pricing?.points_redeemed ?? 0;
  const most = member ? redeemablePoints(s) : 0;
  box.hidden = !member?.may_redeem || !hasLines || (used === 0 && most === 0) || s.state === "tender";
  if (box.hidden || used || ui.redeem?.sessionId !== s.id) ui.redeem = null;
  const choice = ui.redeem;
  if (choice) choice.points = Math.min(choice.points, most);
  $("redeem-use").hidden = Boolean(used || choice);
  $("redeem-use").textContent = t("usePointsUpTo", most);
  $("redeem-choose").hidden = choice?.step !== "choose";
  $("redeem-check").hidden = choice?.step !== "check";
  $("redeem-none").hidden = !used;
  if (!choice) return;
  $("redeem-amount").textContent = String(choice.points);
  $("redeem-less").disabled = choice.points <= 0;
  $("redeem-more").disabled = choice.points >= most;
  $("redeem-all").textContent = t("allPoints", most);
  $("redeem-next").disabled = choice.points <= 0;
  $("redeem-question").textContent = t("confirmPoints", choice.points);
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
  $("receipt-printed").hidden = !ui.printed.has(s.id);

  const receipt = ui.eReceipt?.id === s.id ? ui.eReceipt : null;
  if (!receipt) loadEReceipt(s);
  $("e-receipt").hidden = !receipt?.svg;
  drawQr($("e-receipt-qr"), receipt?.svg, t("eReceipt"));
  // 支付即会员: a payer who is not a member may join with the payment just made.
  const byCode = (s.tenders ?? []).some((tender) => tender.kind === "wechat" || tender.kind === "alipay");
  $("pay-join").hidden = Boolean(s.member) || !byCode || s.online === false || ui.stationOnline === false;
}

/** The paid sale's e-receipt link and its QR: the agent puts them in its answer, not in events, so asked once. */
async function loadEReceipt(s) {
  if (!s.transaction_id || ui.eReceiptAsked === s.id) return;
  ui.eReceiptAsked = s.id;
  try {
    const paid = await api.get(sessionPath(s.id));
    ui.eReceipt = { id: s.id, url: paid.e_receipt_url, svg: paid.e_receipt_qr_svg };
    render();
  } catch {
    // Not shown: the receipt on paper has the same QR code.
  }
}

/** A QR code the agent drew (SVG markup), shown as a picture: never parsed into the page. */
function drawQr(box, svg, label) {
  if (!svg) return box.replaceChildren();
  const src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`;
  const img = box.querySelector("img");
  if (img?.getAttribute("src") === src) {
    img.alt = label;
    return;
  }
  box.replaceChildren(h("img", { src, alt: label }));
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
    return true;
  } catch (error) {
    notice(error);
    return false;
  }
}

function chooseRedeem(change) {
  const s = current();
  if (!isOpen(s) || !s.member) return;
  const most = redeemablePoints(s);
  if (change === "open") ui.redeem = { sessionId: s.id, points: 0, step: "choose" };
  if (!ui.redeem) return;
  const points = ui.redeem.points;
  if (change === "less") ui.redeem.points = Math.max(0, Math.ceil(points / POINTS_STEP) * POINTS_STEP - POINTS_STEP);
  else if (change === "more") ui.redeem.points = Math.min(most, (Math.floor(points / POINTS_STEP) + 1) * POINTS_STEP);
  else if (change === "all") ui.redeem.points = most;
  else if (change === "next" && points > 0) ui.redeem.step = "check";
  else if (change === "back") ui.redeem.step = "choose";
  else if (change === "cancel") ui.redeem = null;
  render();
  // The keyboard's place follows the step: the stepper, the question, or back to "use points".
  if (change === "open" || change === "back") $("redeem-more").focus({ preventScroll: true });
  if (change === "next") $("redeem-confirm").focus({ preventScroll: true });
  if (change === "cancel") $("redeem-use").focus({ preventScroll: true });
}

async function confirmRedeem() {
  const s = current();
  const choice = ui.redeem;
  if (!isOpen(s) || choice?.step !== "check" || choice.sessionId !== s.id) return;
  $("redeem-confirm").disabled = true;
  if (await redeem(s, choice.points)) ui.redeem = null;
  $("redeem-confirm").disabled = false;
  render();
}

async function setQuantity(index, qty) {
  const s = current();
  if (!isOpen(s)) return;
  try {
    show(await api.put(sessionPath(s.id, `/lines/${index}`), { qty }));
  } catch (error) {
    notice(error);
  }
}

/** "需要帮助": the agent calls the staff (the till's screen shows it) and says whether they were told. */
async function callHelp() {
  const button = $("sale-help");
  button.disabled = true;
  try {
    const sent = await api.post("/v1/help", { session_id: current()?.id ?? null });
    const key = sent.delivered ? "helpComing" : "helpWave";
    notice({ zh: sent.message_zh || TEXTS[key].zh, en: TEXTS[key].en }, "info");
  } catch (error) {
    notice(error);
  }
  setTimeout(() => { button.disabled = false; }, NOTICE_S * 1000); // one call, not one per impatient tap
}

// --- phone keypad --------------------------------------------------------------------------------------------

function maskedEntry(digits) {
  // The same mask the agent shows (138****5678): the middle four digits never appear, even while typing.
  return [...digits].map((digit, i) => (i >= 3 && i < 7 ? "*" : digit)).join("");
}

const PHONE_TITLES = { identify: "phoneTitle", join: "joinPhoneTitle", wallet: "walletPhoneTitle" };

/** The keypad, for one of three things: to be known in the sale ("identify"), to join, to see one's wallet. */
function openPhone(purpose) {
  ui.phone = { digits: "", purpose };
  $("phone-mine").checked = false;
  $("phone-error").hidden = true;
  render();
}

function closePhone() {
  const entry = ui.phone;
  ui.phone = null;
  $("phone-mine").checked = false;
  $("phone-error").hidden = true;
  $("phone-display").replaceChildren();
  if (entry?.purpose === "join") {
    closeMemberFlow();
    return;
  }
  // The wallet's keypad goes back to "scan your code"; the sale's takes away a sale it opened with nothing in it.
  const s = current();
  const opened = entry?.openedSession;
  if (s && s.id === opened && isOpen(s) && !s.member && !(s.lines ?? []).length) cancelSale(s, { quiet: true });
  render();
}

function renderPhone() {
  const { digits, purpose, notFound, sending } = ui.phone;
  setText($("phone-title"), PHONE_TITLES[purpose]);
  // Joining shows every digit, so the new member sees the number they give is right; elsewhere the middle four
  // never appear, even while typing.
  $("phone-display").textContent = (purpose === "join" ? digits : maskedEntry(digits)).padEnd(11, "_");
  const askMine = purpose !== "join"; // a new member's consent comes next, on the notice
  $("phone-mine-row").hidden = !askMine;
  $("phone-join").hidden = !notFound;
  $("phone-ok").disabled = sending || !(PHONE.test(digits) && (!askMine || $("phone-mine").checked));
}

function pressKey(key) {
  if (!ui.phone) return;
  const digits = ui.phone.digits;
  if (key === "back") ui.phone.digits = digits.slice(0, -1);
  else if (key === "clear") ui.phone.digits = "";
  else if (/^\d$/.test(key) && digits.length < 11) ui.phone.digits = digits + key;
  ui.phone.notFound = false;
  $("phone-error").hidden = true;
  renderPhone();
}

async function submitPhone() {
  if (!ui.phone || $("phone-ok").disabled) return;
  const entry = ui.phone;
  if (entry.purpose === "join") return phoneToJoin(entry.digits);
  if (entry.purpose === "wallet") return walletByPhone(entry);
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

function phoneError(error) {
  const box = $("phone-error");
  box.textContent = said(error.messageZh, error.message) || t("phoneNotFound");
  box.hidden = false;
}

// --- joining -------------------------------------------------------------------------------------------------

/** Joining: the number (typed, shown whole), the privacy notice with an unticked consent, then central's answer:
 *  a new member (welcome points, the card's QR to keep), a number already a member's (their wallet, once they say
 *  it is theirs), or why not now. `sessionId`: 支付即会员, the payer of that sale joins. Nothing is sent before
 *  consent, and offline nothing is sent at all. */
function startJoin(sessionId = null, phone = null) {
  const s = current();
  if (sessionId && s?.id === sessionId) {
    ui.dismissed = s.id; // the paid sale's screen gives way; none of its data stays
    ui.session = { id: s.id, version: s.version, state: s.state };
  }
  endMemberFlows();
  wipeShopperData();
  if (ui.stationOnline === false) {
    ui.join = { step: "failed", reason: { key: "joinOffline" } };
    render();
    return;
  }
  const join = { step: phone ? "notice" : "phone", sessionId, phone, notice: null };
  ui.join = join;
  if (!phone) ui.phone = { digits: "", purpose: "join" };
  render();
  readNotice(join);
}

/** The privacy notice as the agent has it now (its version goes with the consent). */
async function readNotice(join) {
  try {
    join.notice = await api.get("/v1/members/notice");
  } catch (error) {
    if (ui.join !== join) return;
    ui.join = { step: "failed", reason: error };
    ui.phone = null;
  }
  if (ui.join === join) render();
}

function phoneToJoin(digits) {
  ui.phone = null;
  $("phone-display").replaceChildren();
  if (!ui.join) return render();
  ui.join.phone = digits;
  ui.join.step = "notice";
  $("join-consent").checked = false;
  render();
}

function renderJoin() {
  const join = ui.join;
  $("join-phone").textContent = maskedEntry(join.phone ?? "");
  const notice = join.notice;
  const box = $("privacy");
  const drawn = notice ? `${notice.version}/${lang}` : "";
  if (box.dataset.drawn !== drawn) {
    box.dataset.drawn = drawn;
    const [title, ...paragraphs] = notice ? notice[lang] ?? notice.zh : [];
    box.replaceChildren(...(title ? [h("h3", {}, title)] : []), ...paragraphs.map((text) => h("p", {}, text)));
  }
  $("join-submit").disabled = !notice || !$("join-consent").checked || Boolean(join.sending);
}

async function submitJoin() {
  const join = ui.join;
  if (join?.step !== "notice" || !join.notice || !$("join-consent").checked || join.sending) return;
  join.sending = true;
  render();
  const body = { phone: join.phone, consent: true, notice_version: join.notice.version, session_id: join.sessionId };
  try {
    const answer = await api.post("/v1/members", body);
    if (ui.join !== join) return;
    $("join-consent").checked = false;
    if (answer.created) {
      const member = answer.wallet.member;
      ui.join = { step: "joined", zh: answer.message_zh, welcome: answer.welcome_points, member };
    } else {
      // Their wallet is shown only once they say the number is theirs, and asked for then.
      ui.join = { step: "already", zh: answer.message_zh, phone: join.phone };
    }
  } catch (error) {
    if (ui.join !== join) return;
    join.sending = false;
    if (error.code === "notice_changed") {
      $("join-consent").checked = false; // a new notice is read and agreed to anew
      join.notice = null;
      notice(error);
      readNotice(join);
    } else {
      ui.join = { step: "failed", reason: error.code === "offline" || error.status === 0 ? { key: "joinOffline" } : error };
    }
  }
  render();
}

function renderJoined() {
  const join = ui.join;
  const box = $("joined-box");
  box.classList.toggle("ok", join.step !== "failed");
  box.classList.toggle("warn", join.step === "failed");
  $("joined-already").hidden = join.step !== "already";
  $("join-wallet").hidden = join.step !== "already";
  $("join-wallet").disabled = !$("already-mine").checked || Boolean(join.sending);
  setText($("join-done"), join.step === "joined" ? "done" : "back");
  const title = $("joined-title");
  const body = [];
  if (join.step === "joined") {
    title.textContent = agentSaid(join.zh, "welcome");
    if (join.welcome) body.push(h("p", { className: "amount welcome-points" }, t("welcomePoints", join.welcome)));
    if (join.member.card_qr_svg) {
      const qr = h("div", { className: "qr-code" });
      drawQr(qr, join.member.card_qr_svg, t("saveInWechat"));
      body.push(h("figure", { className: "qr" }, qr, h("figcaption", {}, t("saveInWechat"))));
    }
    body.push(h("p", { className: "join-phone" }, t("phoneLabel"), " ", h("strong", {}, join.member.phone_masked ?? "")));
  } else if (join.step === "already") {
    title.textContent = agentSaid(join.zh, "alreadyMember");
    body.push(h("p", { className: "join-phone" }, t("phoneLabel"), " ", h("strong", {}, maskedEntry(join.phone))));
  } else {
    title.textContent = t("joinFailed");
    const reason = join.reason ?? {};
    body.push(h("p", { className: "reason" }, reason.key ? t(reason.key) : said(reason.messageZh, reason.message)));
  }
  const drawn = `${join.step}/${lang}`;
  const holder = $("joined-body");
  if (holder.dataset.drawn !== drawn || !holder.childElementCount) {
    holder.dataset.drawn = drawn;
    holder.replaceChildren(...body);
  }
}

// --- the wallet ----------------------------------------------------------------------------------------------

/** "我的会员": the agent takes the station's next member, card or payment code scan as the wallet's (event
 *  `wallet`), asked again before its window closes; the keypad is the other way in. */
function openWallet() {
  endMemberFlows();
  wipeShopperData();
  ui.wallet = { listenUntil: 0 };
  render();
  listenForWallet();
}

async function listenForWallet() {
  const wallet = ui.wallet;
  if (!wallet || wallet.data || wallet.asking) return;
  wallet.asking = true;
  try {
    const { listening_s: seconds } = await api.post("/v1/wallet/listen");
    wallet.listenUntil = Date.now() + seconds * 1000;
  } catch (error) {
    notice(error);
    wallet.listenUntil = Date.now() + POLL_MS; // asked again shortly
  } finally {
    wallet.asking = false;
  }
}

async function walletByPhone(entry) {
  entry.sending = true;
  renderPhone();
  try {
    const answer = await api.post("/v1/wallet", { phone: entry.digits });
    if (ui.phone !== entry) return;
    if (answer.found) {
      showWallet(answer.wallet);
      return;
    }
    entry.sending = false;
    entry.notFound = true; // not a member: they may join with the number they typed
    phoneError({ message: answer.message, messageZh: answer.message_zh });
    renderPhone();
  } catch (error) {
    if (ui.phone !== entry) return;
    entry.sending = false;
    phoneError(error);
    renderPhone();
  }
}

async function walletOfJoined() {
  const join = ui.join;
  if (join?.step !== "already" || !$("already-mine").checked) return;
  join.sending = true;
  render();
  try {
    const answer = await api.post("/v1/wallet", { phone: join.phone });
    if (ui.join === join && answer.found) showWallet(answer.wallet);
  } catch (error) {
    join.sending = false;
    notice(error);
    render();
  }
}

function showWallet(data) {
  endMemberFlows();
  $("phone-display").replaceChildren();
  ui.wallet = { data };
  touch();
  render();
}

function renderWallet() {
  const { member, coupons = [], receipts = [] } = ui.wallet.data;
  $("wallet-member").replaceChildren(
    h("p", { className: "name" }, member.display_name || member.phone_masked || t("member")),
    member.display_name && member.phone_masked ? h("p", { className: "phone" }, member.phone_masked) : "",
    tierLabel(member),
    h("p", { className: "wallet-points" }, h("span", {}, t("points")), " ", h("strong", {}, String(member.points ?? 0))),
    member.points_pending > 0 ? h("p", { className: "pending" }, t("pointsPending", member.points_pending)) : "",
  );
  $("wallet-coupons").replaceChildren(...(coupons.length ? coupons.map(couponItem) : [h("li", { className: "hint" }, t("noCoupons"))]));
  $("wallet-receipts").replaceChildren(
    ...(receipts.length ? receipts.map(receiptItem) : [h("li", { className: "hint" }, t("noReceipts"))]),
  );
}

function couponItem(coupon) {
  const off = coupon.kind === "percent_off" ? t("percentOff", coupon.percent_off) : `-${yuan(coupon.amount_off_fen)}`;
  return h("li", { className: "coupon" },
    h("span", {}, h("strong", {}, coupon.title || coupon.code),
      coupon.threshold_fen ? h("span", { className: "terms" }, t("threshold", yuan(coupon.threshold_fen))) : "",
      coupon.valid_until ? h("span", { className: "terms" }, t("validUntil", storeTime(coupon.valid_until))) : ""),
    h("span", { className: "discount" }, off));
}

function receiptItem(receipt) {
  return h("li", { className: "receipt" },
    h("span", { className: "receipt-head" }, h("strong", {}, receipt.receipt_no ?? "—"), h("span", {}, storeTime(receipt.created_at)),
      h("span", { className: "money" }, yuan(receipt.total_fen))),
    receipt.points_earned ? h("span", { className: "earned" }, t("pointsPlus", receipt.points_earned)) : "",
    receipt.e_receipt_url ? h("span", { className: "link" }, `${t("eReceiptLink")}: ${receipt.e_receipt_url}`) : "");
}

/** "2026-11-30 15:37" in the store's time zone (GET /v1/status), whatever the kiosk PC's own. */
function storeTime(iso) {
  const format = (timeZone) => new Intl.DateTimeFormat("en-GB", {
    timeZone, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  }).formatToParts(new Date(iso));
  let parts;
  try {
    parts = format(ui.storeTimezone);
  } catch {
    parts = format("UTC");
  }
  const part = Object.fromEntries(parts.map(({ type, value }) => [type, value]));
  return `${part.year}-${part.month}-${part.day} ${part.hour}:${part.minute}`;
}

/** Join and wallet are over: back to idle. Their data leaves the page; the language stays for the shopper. */
function closeMemberFlow() {
  endMemberFlows();
  wipeShopperData();
  render();
}

function endMemberFlows() {
  ui.join = null;
  ui.wallet = null;
  if (ui.phone && ui.phone.purpose !== "identify") ui.phone = null;
  $("join-consent").checked = false;
  $("already-mine").checked = false;
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
  setText($("idle-clears"), isOpen(current()) ? "idleClears" : "idleClearsScreen");
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
 *  token stays), their membership screens close, notices go, and the screen speaks Chinese again. */
function clearForNextShopper() {
  endMemberFlows();
  wipeShopperData();
  hideNotice();
  forgetAllButToken();
  setLanguage("zh");
}

/** Every element showing a shopper's data is emptied, and what this page held of them is let go. */
function wipeShopperData() {
  for (const node of document.querySelectorAll("[data-customer]")) node.replaceChildren();
  $("member").hidden = true;
  $("phone-error").hidden = true;
  $("phone-mine").checked = false;
  ui.refusal = null;
  ui.redeem = null;
  ui.eReceipt = null;
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
  if (ui.wallet && !ui.wallet.data && now > ui.wallet.listenUntil - 2000) listenForWallet(); // before it lapses
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
    ui.refusal = { session_id: s?.id ?? null, zh: data.message_zh ?? null, en: data.message ?? "", version: s?.version };
    // A refused scan in the sale on screen stays in the basket until the next change (e.g. weighed goods); any
    // other refusal is a notice.
    const inSale = s && s.id === current()?.id && ui.screen === "sale";
    if (!inSale) notice({ zh: data.message_zh ?? null, en: data.message ?? "" });
    // The scan the wallet waited for found nobody: the agent listens no more, so it is asked again.
    if (!s && ui.wallet && !ui.wallet.data) ui.wallet.listenUntil = 0;
  }
  if (type === "wallet" && data.wallet && (ui.wallet || ui.screen === "idle")) showWallet(data.wallet);
  if (type === "printed" && s) ui.printed.add(s.id);
  if (s) show(s);
  if (type === "status") poll().catch(() => {});
}

/** The station as the agent describes it: online or not, the store's name, and its open sale, read by id. Asking
 *  for /v1/sessions/current instead would answer 404 whenever no sale is open, an error in the browser's log. */
async function poll() {
  const status = await api.get("/v1/status");
  ui.stationOnline = status.checkout?.online ?? null;
  ui.storeTimezone = status.store_timezone || ui.storeTimezone;
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
$("use-phone").addEventListener("click", () => openPhone("identify"));
$("sale-phone").addEventListener("click", () => openPhone("identify"));
$("phone-join").addEventListener("click", () => ui.phone && startJoin(null, ui.phone.digits));
$("phone-cancel").addEventListener("click", closePhone);
$("phone-ok").addEventListener("click", submitPhone);
$("phone-mine").addEventListener("change", () => ui.phone && renderPhone());
$("keypad").addEventListener("click", (event) => {
  const key = event.target.closest("button")?.dataset.key;
  if (key) pressKey(key);
});
$("join-open").addEventListener("click", () => startJoin());
$("wallet-join").addEventListener("click", () => startJoin());
$("pay-join-button").addEventListener("click", () => current() && startJoin(current().id));
$("join-consent").addEventListener("change", () => ui.join && render());
$("join-back").addEventListener("click", closeMemberFlow);
$("join-submit").addEventListener("click", submitJoin);
$("already-mine").addEventListener("change", () => ui.join && render());
$("join-wallet").addEventListener("click", walletOfJoined);
$("join-done").addEventListener("click", closeMemberFlow);
$("wallet-open").addEventListener("click", openWallet);
$("wallet-phone").addEventListener("click", () => openPhone("wallet"));
$("listen-close").addEventListener("click", closeMemberFlow);
$("wallet-close").addEventListener("click", closeMemberFlow);
$("sale-help").addEventListener("click", callHelp);
$("redeem-use").addEventListener("click", () => chooseRedeem("open"));
for (const change of ["less", "more", "all", "next", "back", "cancel"]) {
  $(`redeem-${change}`).addEventListener("click", () => chooseRedeem(change));
}
$("redeem-confirm").addEventListener("click", confirmRedeem);
$("redeem-none").addEventListener("click", () => current() && redeem(current(), 0));
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
