// The cashier's till screen: the sale in progress (live over server-sent events), codes typed or scanned,
// member by phone, cash / card / other tenders, cancel, recent transactions with reprint and refund, and the
// station's status. Every refusal from the agent is shown in the message area, never swallowed.
import { Api, EVENT_TYPES, OPEN_STATES, h, parseYuan, readFragment, yuan } from "/shared/api.js";

const { token } = readFragment();
const api = new Api(token);
const $ = (id) => document.getElementById(id);

const STATES = {
  idle: "新交易 New", member: "会员 Member", basket: "待付款 To pay", tender: "收款中 Paying", paid: "已付款 Paid",
  closed: "已完成 Done", cancelled: "已取消 Cancelled",
};
const TENDERS = {
  cash: "现金 Cash", wechat: "微信支付 WeChat Pay", alipay: "支付宝 Alipay", card: "银行卡 Card", other: "其他 Other",
};
const KINDS = { sale: "销售 Sale", refund: "退款 Refund", void: "作废 Void" };
const VIA = { member_code: "会员码 member code", card: "会员卡 card", phone: "手机号 phone", payment_code: "付款码 payment code" };
const WAITING = new Set(["sending", "PENDING", "USERPAYING", "UNKNOWN", "REVERSING"]);
const UNAUTHORIZED = {
  message: "This screen needs the station's API token: open it as /till/#token=… with the station's api.token.",
  message_zh: "此屏幕需要本机的 API 令牌",
};

/** A step refused here, before asking the agent: shown like the agent's own refusals. */
const refused = (message, messageZh) => Object.assign(new Error(message), { messageZh });

const till = { session: null, locked: false, finished: new Set(), listStale: false, timeZone: null };

// --- messages ------------------------------------------------------------------------------------------------

/** Shows an ApiError, an event's message or `{ message, message_zh }` to the cashier until the next one. */
function say(what, kind = "error") {
  const message = what.message ?? "";
  const zh = what.messageZh ?? what.message_zh ?? null;
  if (!message && !zh) return;
  const box = $("message");
  box.className = `message ${kind}`;
  box.dataset.code = what.code ?? "";
  $("message-text").replaceChildren(h("div", { className: "en" }, message), zh ? h("div", { className: "zh", lang: "zh-CN" }, zh) : "");
  box.hidden = false;
}

async function attempt(work) {
  try {
    return await work();
  } catch (error) {
    say(error.status === 401 ? { ...UNAUTHORIZED, code: "unauthorized" } : error);
    return undefined;
  }
}

// --- supervisor approval -------------------------------------------------------------------------------------

/** Runs `send(approval)`; when the agent answers that a supervisor must approve (a refund, a void, a second
 *  reprint), asks for their PIN or card and sends the step again with it. Cancelled: nothing was done. */
async function withApproval(send) {
  try {
    return await send(undefined);
  } catch (error) {
    if (error.code !== "approval_required") throw error;
    return askSupervisor(error, send);
  }
}

function askSupervisor(why, send) {
  const dialog = $("approval");
  const input = $("approval-secret");
  $("approval-why").replaceChildren(h("div", { lang: "zh-CN" }, why.messageZh ?? ""), h("div", { className: "muted" }, why.message));
  $("approval-error").textContent = "";
  input.value = "";
  return new Promise((resolve, reject) => {
    const finish = (settle) => {
      $("approval-form").onsubmit = null;
      $("approval-cancel").onclick = null;
      dialog.close();
      settle();
    };
    $("approval-form").onsubmit = async (event) => {
      event.preventDefault();
      const text = input.value.trim();
      if (!text) return;
      // Typed on the keypad: 4-12 digits. Anything else came from the supervisor's card through the scanner.
      const approval = /^[0-9]{4,12}$/.test(text) ? { pin: text } : { card: text };
      $("approval-ok").disabled = true;
      try {
        const result = await send(approval);
        finish(() => resolve(result));
      } catch (error) {
        if (error.code === "approval_refused") {
          $("approval-error").textContent = `${error.messageZh ?? ""} ${error.message}`;
          input.value = "";
          input.focus();
        } else {
          finish(() => reject(error));  // locked out, or the step itself refused: the message area says why
        }
      } finally {
        $("approval-ok").disabled = false;
      }
    };
    $("approval-cancel").onclick = () => finish(() => reject(refused("Not approved: nothing was done", "未获授权，操作未执行")));
    dialog.showModal();
    input.focus();
  });
}

$("approval-keys").replaceChildren(
  ...["1", "2", "3", "4", "5", "6", "7", "8", "9", "⌫", "0", "C"].map((key) => h("button", {
    type: "button", className: "plain", ariaLabel: key === "⌫" ? "删除 Delete" : key === "C" ? "清除 Clear" : key,
    onclick: () => {
      const input = $("approval-secret");
      input.value = key === "C" ? "" : key === "⌫" ? input.value.slice(0, -1) : input.value + key;
      input.focus();
    },
  }, key)),
);

function lock() {
  till.locked = true;
  document.body.dataset.locked = "true";
  for (const control of document.querySelectorAll("main button, main input, main select")) control.disabled = true;
  say({ ...UNAUTHORIZED, code: "unauthorized" });
}

// --- the sale ------------------------------------------------------------------------------------------------

function show(session) {
  if (!session?.id) return session;
  const old = till.session;
  if (old && old.id === session.id && (session.version ?? 0) < (old.version ?? 0)) return old;
  if (till.finished.has(session.id) && OPEN_STATES.has(session.state)) return old; // paid or cancelled is final
  if (!OPEN_STATES.has(session.state)) till.finished.add(session.id);
  till.session = session;
  renderSale();
  return session;
}

const openSale = () => (till.session && OPEN_STATES.has(till.session.state) ? till.session : null);
const path = (session, rest = "") => `/v1/sessions/${encodeURIComponent(session.id)}${rest}`;

async function ensureSale() {
  if (openSale()) return openSale();
  try {
    return show(await api.post("/v1/sessions", {}));
  } catch (error) {
    if (error.code === "sale_open" && error.body.session_id) return show(await api.get(`/v1/sessions/${encodeURIComponent(error.body.session_id)}`));
    throw error;
  }
}

function requireSale() {
  const session = openSale();
  if (!session) throw refused("No sale is open: scan the customer's code or press New sale first.", "没有进行中的交易");
  return session;
}

function row(label, value, className = "") {
  return [h("dt", { className }, label), h("dd", { className }, value)];
}

function renderSale() {
  const s = till.session;
  $("sale-empty").hidden = Boolean(s);
  $("sale-body").hidden = !s;
  $("sale-state").hidden = !s;
  const open = Boolean(s && OPEN_STATES.has(s.state));
  if (!till.locked) $("cancel-sale").disabled = !open;
  if (!s) {
    $("sale-receipt").textContent = "";
    $("points-form").hidden = true;
    return;
  }
  $("sale-state").textContent = STATES[s.state] ?? s.state;
  $("sale-state").dataset.state = s.state;
  $("sale-receipt").textContent = s.receipt_no ? `小票号 Receipt ${s.receipt_no}` : "";

  const member = s.member;
  const memberBox = $("sale-member");
  memberBox.hidden = !member;
  if (member) {
    memberBox.replaceChildren(
      h("strong", { className: "name" }, member.display_name || "会员 Member"),
      h("span", { className: "tier", dataset: { tier: member.tier } }, member.tier_name || member.tier),
      h("span", {}, `积分 ${member.points} points`),
      member.phone_masked ? h("span", {}, member.phone_masked) : "",
      h("span", { className: "via" }, VIA[member.via] ?? member.via),
      h("span", { className: member.may_redeem ? "ok" : "muted" }, member.may_redeem ? "可用积分 may redeem" : "不可用积分 may not redeem"),
    );
  }

  const lines = s.lines ?? [];
  $("sale-lines").replaceChildren(...(lines.length ? lines.map((line) => h("tr", {},
    h("td", {}, line.name || line.sku, h("span", { className: "sku" }, ` ${line.sku}`)),
    h("td", { className: "num" }, yuan(line.unit_price_fen)),
    h("td", { className: "num" }, String(line.qty)),
    h("td", { className: "num" }, yuan(line.amount_fen ?? line.qty * line.unit_price_fen)),
  )) : [h("tr", {}, h("td", { colSpan: 4, className: "empty" }, "还没有商品 No items yet (the POS sends the basket)"))]));

  $("sale-coupons").replaceChildren(...(s.coupons ?? []).map((coupon) => h("li", {},
    `${coupon.title || coupon.code} −${yuan(coupon.amount_off_fen)} `,
    open ? h("button", { type: "button", className: "plain", onclick: () => removeCoupon(coupon.code) }, "移除 Remove") : "",
  )));

  const p = s.pricing;
  const rows = [];
  if (p) {
    rows.push(...row("小计 Subtotal", yuan(p.subtotal_fen)));
    if (p.tier_discount_fen) rows.push(...row("会员折扣 Member discount", `−${yuan(p.tier_discount_fen)}`, "discount"));
    if (p.coupon_discount_fen) rows.push(...row("优惠券 Coupons", `−${yuan(p.coupon_discount_fen)}`, "discount"));
    if (p.points_redeemed) rows.push(...row(`积分抵扣 ${p.points_redeemed} points`, `−${yuan(p.points_value_fen)}`, "discount"));
    rows.push(...row("应付 Amount due", yuan(p.amount_due_fen), "due"));
    if (member) {
      const earned = s.points?.earned ?? p.points_earned;
      rows.push(...row("本单积分 Points earned", `${earned}${s.online === false ? " (暂计 provisional)" : ""}`));
      if (s.points) rows.push(...row("积分余额 Balance after", String(s.points.balance)));
    }
  }
  if (s.paid_fen) rows.push(...row("已付 Paid", yuan(s.paid_fen)));
  $("sale-pricing").replaceChildren(...rows);

  const tenders = s.tenders ?? [];
  $("sale-tenders-table").hidden = tenders.length === 0;
  $("sale-tenders").replaceChildren(...tenders.map((tender) => h("tr", {},
    h("td", {}, TENDERS[tender.kind] ?? tender.kind),
    h("td", { className: "num" }, yuan(tender.amount_fen)),
    h("td", { className: "num" }, yuan(tender.tendered_fen ?? tender.amount_fen)),
    h("td", { className: "num" }, tender.change_fen ? yuan(tender.change_fen) : ""),
    h("td", { className: "ref" }, tender.reference ?? ""),
  )));

  renderPayment(s, open);
  $("remaining").textContent = yuan(s.remaining_fen ?? 0);
  $("remaining-box").hidden = !open;
  $("change-box").hidden = !s.change_fen;
  $("change").textContent = yuan(s.change_fen ?? 0);

  const pointsForm = $("points-form");
  pointsForm.hidden = !(open && member?.may_redeem && lines.length);
  if (!pointsForm.hidden && document.activeElement !== $("points")) $("points").value = String(p?.points_redeemed ?? 0);
}

function renderPayment(s, open) {
  const box = $("sale-payment");
  const payment = s.payment;
  box.hidden = !payment || payment.state === "SUCCESS";
  if (box.hidden) return box.replaceChildren();
  const waiting = WAITING.has(payment.state);
  box.dataset.state = payment.state;
  box.replaceChildren(
    h("span", { className: "badge" }, `${TENDERS[payment.provider] ?? payment.provider} ${payment.state}`),
    ` ${yuan(payment.amount_fen)} `,
    h("span", {}, payment.message ?? ""),
    payment.message_zh ? h("span", { className: "zh" }, ` ${payment.message_zh}`) : "",
    waiting && open && !payment.cancel_requested
      ? h("button", { type: "button", className: "danger", id: "cancel-payment", onclick: cancelPayment }, "取消支付 Cancel payment")
      : "",
  );
}

// --- actions -------------------------------------------------------------------------------------------------

function form(id, handler) {
  $(id).addEventListener("submit", async (event) => {
    event.preventDefault();
    if (till.locked) return lock();
    const submit = event.target.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      await attempt(handler);
    } finally {
      submit.disabled = till.locked;
    }
  });
}

function stepDone(session) {
  show(session);
  if (session?.message) say({ message: session.message }, "info");
}

// A keyboard-wedge scanner types wherever the focus is: keys typed outside a field (after a button was pressed)
// go to the code box, so a scan is never lost to a button. A field being typed in keeps its keys.
document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLElement && event.target.closest("input, select, textarea");
  if (typing || event.ctrlKey || event.metaKey || event.altKey || event.key.length !== 1 || till.locked) return;
  $("code").focus();
});

form("code-form", async () => {
  const text = $("code").value.trim();
  if (!text) return;
  const session = await ensureSale();
  const after = await api.post(path(session, "/codes"), { text });
  $("code").value = "";
  stepDone(after);
});

form("phone-form", async () => {
  const phone = $("phone").value.replace(/[\s-]/g, "");
  const session = await ensureSale();
  const after = await api.post(path(session, "/phone"), { phone, confirmed: $("phone-confirmed").checked });
  $("phone").value = "";
  $("phone-confirmed").checked = false;
  stepDone(after);
});

// Joining at the till: the customer reads the notice (shown on the till), the cashier ticks their consent.
let notice = null;
$("join-notice").addEventListener("toggle", async () => {
  if (!$("join-notice").open || notice) return;
  notice = await attempt(() => api.get("/v1/members/notice"));
  if (notice) $("join-notice-text").replaceChildren(...notice.zh.map((line) => h("p", { lang: "zh-CN" }, line)));
});

form("join-form", async () => {
  notice ??= await api.get("/v1/members/notice");
  const phone = $("join-phone").value.replace(/[\s-]/g, "");
  const joined = await api.post("/v1/members", {
    phone, consent: $("join-consent").checked, notice_version: notice.version,
  });
  $("join-phone").value = "";
  $("join-consent").checked = false;
  const member = joined.wallet.member;
  const card = member.card_no ? `, card ${member.card_no}` : "";
  say({
    message: `${joined.message}: ${member.phone_masked}, ${member.points} points${card}`,
    message_zh: `${joined.message_zh}${joined.created && joined.welcome_points ? ` 赠送 ${joined.welcome_points} 积分` : ""}`,
  }, "info");
});

form("points-form", async () => {
  const session = requireSale();
  const points = Number($("points").value);
  if (!Number.isInteger(points) || points < 0) throw refused("Points must be a whole number, 0 or more.", "积分须为整数");
  stepDone(await api.put(path(session, "/redemption"), { points }));
});

form("cash-form", async () => {
  const session = requireSale();
  const tendered = parseYuan($("cash").value);
  if (tendered === null || tendered <= 0) throw refused("Enter the cash handed over in yuan, e.g. 100 or 100.50.", "请输入收到的现金金额");
  const after = await api.post(path(session, "/tenders"), { kind: "cash", tendered_fen: tendered });
  $("cash").value = "";
  stepDone(after);
});

form("card-form", async () => {
  const session = requireSale();
  const typed = $("card-amount").value.trim();
  const amount = typed ? parseYuan(typed) : session.remaining_fen;
  if (amount === null || !(amount > 0)) throw refused("Enter the amount paid on the terminal in yuan, e.g. 12.50.", "请输入金额");
  const reference = $("card-reference").value.trim() || null;
  const after = await api.post(path(session, "/tenders"), { kind: $("card-kind").value, amount_fen: amount, reference });
  $("card-amount").value = "";
  $("card-reference").value = "";
  stepDone(after);
});

async function cancelPayment() {
  await attempt(async () => stepDone(await api.post(path(requireSale(), "/payment/cancel"))));
}

async function removeCoupon(code) {
  await attempt(async () => stepDone(await api.delete(path(requireSale(), `/coupons/${encodeURIComponent(code)}`))));
}

$("new-sale").addEventListener("click", () => attempt(async () => {
  if (till.session && !OPEN_STATES.has(till.session.state)) till.session = null; // put the finished sale away
  try {
    show(await api.post("/v1/sessions", {}));
    say({ message: "New sale opened", message_zh: "新交易" }, "info");
  } catch (error) {
    if (error.code === "sale_open" && error.body.session_id) show(await api.get(`/v1/sessions/${encodeURIComponent(error.body.session_id)}`));
    renderSale();
    throw error;
  }
}));

let confirmTimer = null;
$("cancel-sale").addEventListener("click", () => {
  $("cancel-sale").hidden = true;
  $("cancel-sale-confirm").hidden = false;
  clearTimeout(confirmTimer);
  confirmTimer = setTimeout(() => {
    $("cancel-sale").hidden = false;
    $("cancel-sale-confirm").hidden = true;
  }, 5000);
});
$("cancel-sale-confirm").addEventListener("click", () => attempt(async () => {
  clearTimeout(confirmTimer);
  $("cancel-sale").hidden = false;
  $("cancel-sale-confirm").hidden = true;
  const sale = requireSale();
  stepDone(await withApproval((approval) => api.post(path(sale, "/cancel"), approval ? { approval } : {})));
}));

$("message-close").addEventListener("click", () => { $("message").hidden = true; });

// --- recent transactions -------------------------------------------------------------------------------------

/** The store's time (its zone from /v1/status), as on the receipt — never the browser's own zone. */
function timeOf(iso) {
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return "";
  const options = { hour12: false, hour: "2-digit", minute: "2-digit", second: "2-digit" };
  if (till.timeZone) options.timeZone = till.timeZone;
  return at.toLocaleTimeString("zh-CN", options);
}

/** `auto`: after an event. An open refund confirmation is left alone then, and the list catches up once it
 *  is closed. */
async function refreshTransactions({ auto = false } = {}) {
  if (auto && $("transactions").querySelector("tr.confirm")) {
    till.listStale = true;
    return;
  }
  till.listStale = false;
  const transactions = await attempt(() => api.get("/v1/transactions?limit=15"));
  if (!Array.isArray(transactions)) return;
  const body = $("transactions");
  if (!transactions.length) {
    body.replaceChildren(h("tr", {}, h("td", { colSpan: 7, className: "empty" }, "还没有交易 No transactions yet")));
    return;
  }
  body.replaceChildren(...transactions.map(transactionRow));
}

function transactionRow(t) {
  const tenders = (t.body?.tenders ?? []).map((tender) => TENDERS[tender.kind]?.split(" ")[0] ?? tender.kind).join(" + ");
  const receipt = t.receipt_no ?? t.id.slice(0, 8);
  const actions = h("td", { className: "actions" },
    h("button", { type: "button", className: "plain", onclick: () => reprint(t) }, "重打 Reprint"),
    t.kind === "sale"
      ? h("button", { type: "button", className: "plain danger", onclick: (event) => askRefund(t, event.target.closest("tr")) }, "退款 Refund")
      : "",
  );
  const original = t.body?.original_receipt_no ? h("span", { className: "sku" }, ` ← ${t.body.original_receipt_no}`) : "";
  return h("tr", { dataset: { id: t.id, receipt: receipt, kind: t.kind } },
    h("td", {}, timeOf(t.created_at)),
    h("td", { className: "receipt-no" }, receipt, original),
    h("td", {}, KINDS[t.kind] ?? t.kind),
    h("td", { className: "num" }, yuan(t.kind === "sale" ? t.total_fen : -Math.abs(t.total_fen))),
    h("td", {}, tenders),
    h("td", {}, t.body?.member?.display_name ?? t.member_id ?? ""),
    actions,
  );
}

async function reprint(t) {
  await attempt(async () => {
    const where = `/v1/transactions/${encodeURIComponent(t.id)}/reprint`;
    await withApproval((approval) => api.post(where, approval ? { approval } : {}));
    say({ message: `Receipt ${t.receipt_no ?? t.id} sent to the printer again`, message_zh: "已重打小票" }, "info");
  });
}

const REFUND_REASONS = ["顾客退货", "质量问题", "商品破损", "价格错误"];

/** The refund form under a sale's row: each line with what is left to refund, a reason (required), confirm. */
async function askRefund(t, clicked) {
  $("transactions").querySelector("tr.confirm")?.remove();
  const sale = await attempt(() => api.get(`/v1/transactions/${encodeURIComponent(t.id)}`));
  if (!sale) return;
  // The list may have been drawn again while the sale was read (a sale just paid elsewhere): the form goes under
  // the sale's row as it is now.
  const tr = clicked.isConnected ? clicked : $("transactions").querySelector(`tr[data-id="${CSS.escape(t.id)}"]`);
  if (!tr) return;
  const refunded = new Map();
  for (const r of sale.refunds ?? []) for (const l of r.body?.lines ?? []) refunded.set(l.line, (refunded.get(l.line) ?? 0) + l.qty);
  const rows = (sale.body?.lines ?? []).map((line, index) => {
    const left = line.qty - (refunded.get(index) ?? 0);
    const qty = h("input", { type: "number", className: "qty", min: 0, max: left, step: 1, value: left, disabled: left <= 0,
      ariaLabel: `${line.name} 退货数量 quantity to refund` });
    return { index, left, qty, row: h("div", { className: "refund-line" },
      h("span", { className: "name" }, line.name), h("span", { className: "muted" }, ` 可退 ${left} left `), qty) };
  });
  const choice = h("select", { className: "reason-choice", ariaLabel: "退款原因 reason" },
    h("option", { value: "" }, "选择原因 Choose a reason"),
    ...REFUND_REASONS.map((r) => h("option", { value: r }, r)),
    h("option", { value: "other" }, "其他 Other…"));
  const words = h("input", { className: "reason", placeholder: "原因 reason", maxLength: 80, hidden: true });
  const go = h("button", { type: "button", className: "danger", disabled: true }, "确认退款 Confirm refund");
  const reason = () => (choice.value === "other" ? words.value.trim() : choice.value);
  const asked = () => rows.filter((r) => Number(r.qty.value) > 0).map((r) => ({ line: r.index, qty: Number(r.qty.value) }));
  const check = () => {
    words.hidden = choice.value !== "other";
    go.disabled = !reason() || asked().length === 0 || rows.some((r) => !(Number(r.qty.value) >= 0 && Number(r.qty.value) <= r.left));
  };
  for (const node of [choice, words, ...rows.map((r) => r.qty)]) node.addEventListener("input", check);
  const confirm = h("tr", { className: "confirm", dataset: { for: t.id } }, h("td", { colSpan: 7 },
    h("div", {}, `退款 ${t.receipt_no ?? t.id} — Refund: choose the quantities and a reason`),
    ...rows.map((r) => r.row),
    h("div", { className: "refund-reason" }, choice, words),
    go,
    h("button", { type: "button", className: "plain", onclick: () => closeConfirm(confirm) }, "返回 Back"),
  ));
  go.addEventListener("click", () => refund(t, asked(), reason(), confirm));
  tr.after(confirm);
  choice.focus();
}

async function refund(t, lines, reason, confirmRow) {
  for (const button of confirmRow.querySelectorAll("button")) button.disabled = true;
  const done = await attempt(async () => {
    const asked = { transaction: t.id, lines, reason };
    const record = await withApproval((approval) => api.post("/v1/refunds", approval ? { ...asked, approval } : asked));
    const no = record?.receipt_no ?? record?.id ?? "";
    say({ message: `Refunded ${yuan(record?.total_fen ?? 0)} (refund receipt ${no})`, message_zh: "退款完成" }, "info");
    return true;
  });
  if (!done) {
    for (const button of confirmRow.querySelectorAll("button")) button.disabled = false;
    return;
  }
  confirmRow.remove();
  refreshTransactions();
}

function closeConfirm(row) {
  row.remove();
  if (till.listStale) refreshTransactions();
}

$("recent-refresh").addEventListener("click", () => refreshTransactions());

// --- status, events, start -----------------------------------------------------------------------------------

function pill(id, text, className) {
  const node = $(id);
  node.textContent = text;
  node.className = `pill ${className}`;
}

async function refreshStatus() {
  let status;
  try {
    status = await api.get("/v1/status");
  } catch (error) {
    if (error.status !== 401) pill("status-online", "代理无响应 agent not answering", "bad");
    return;
  }
  $("store").textContent = status.store_name ? `${status.store_name} · 收银台 Till` : "收银台 Till";
  if (status.store_timezone && status.store_timezone !== till.timeZone) {
    till.timeZone = status.store_timezone;
    refreshTransactions({ auto: true });
  }
  $("station").textContent = [status.station_id, status.store_id].filter(Boolean).join(" · ");
  const checkout = status.checkout ?? {};
  const online = checkout.online;
  if (online === undefined || online === null) pill("status-online", "联网状态未知 online: unknown", "muted");
  else pill("status-online", online ? "在线 Online" : "离线 Offline", online ? "ok" : "bad");
  const outbox = checkout.outbox_pending ?? status.database?.outbox_pending;
  const lag = checkout.sync_lag_s ? ` · ${Math.round(checkout.sync_lag_s / 60)} min` : "";
  pill("status-outbox", `待上传 Outbox ${outbox ?? "?"}${outbox ? lag : ""}`, outbox ? "warn" : "muted");
  const printer = checkout.printer_state;
  if (!printer) pill("status-printer", "无打印机 No printer", "muted");
  else {
    const queued = checkout.printer_queued ? ` · ${checkout.printer_queued} queued` : "";
    const check = checkout.printer_uncertain ? ` · ${checkout.printer_uncertain} to check` : "";
    pill("status-printer", `打印机 Printer ${printer}${queued}${check}`, printer === "ready" ? "ok" : "bad");
  }
}

function onEvent(type, data) {
  if (data.session) show(data.session);
  if (type === "message") say({ message: data.message, message_zh: data.message_zh, code: data.error });
  if (type === "paid" || type === "closed" || type === "cancelled") refreshTransactions({ auto: true });
  if (type === "refunded") {
    say({ message: data.message, message_zh: "退款完成" }, "info"); // a refund finished in the background
    refreshTransactions({ auto: true });
  }
  if (type === "status") refreshStatus(); // pushed within a second of the agent knowing
  if (type === "help" && data.call) helpCalled(data.call);
}

/** A kiosk's customer asks for staff: a banner that stays until a cashier says they are going. */
function helpCalled(call) {
  const list = $("help-calls");
  if (list.querySelector(`[data-call="${CSS.escape(call.id)}"]`)) return;
  const item = h("li", { dataset: { call: call.id } },
    h("span", { lang: "zh-CN" }, `${call.station_name}（${call.station_id}）需要帮助`),
    h("span", { className: "muted" }, ` ${timeOf(call.at)} — ${call.station_id} needs staff `),
    h("button", { type: "button", onclick: () => { item.remove(); list.hidden = !list.children.length; } }, "我去处理 On my way"),
  );
  list.append(item);
  list.hidden = false;
}

async function resync() {
  const shown = openSale();
  try {
    show(await api.get("/v1/sessions/current"));
  } catch (error) {
    if (error.status === 404 && shown) show(await api.get(path(shown)).catch(() => null));
  }
}

async function start() {
  try {
    show(await api.get("/v1/sessions/current"));
  } catch (error) {
    if (error.status !== 404 && error.status !== 401) say(error);
  }
  renderSale();
  refreshTransactions();
}

api.onUnauthorized = lock;
api.follow("/v1/events", EVENT_TYPES, onEvent, (up) => {
  document.body.dataset.live = String(up);
  if (up) resync(); // what happened while the stream was not connected
});
// The event stream is the fast path; this slow look catches anything it dropped.
setInterval(() => { if (!till.locked) resync(); }, 3000);
refreshStatus();
setInterval(refreshStatus, 15000); // the `status` event is the fast path; this catches a dropped one
start();
