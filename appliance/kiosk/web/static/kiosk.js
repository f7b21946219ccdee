/* The citizen's kiosk: renders the flow's view() and the camera guidance; every touch goes
   to POST /api/event. Preview frames are drawn to a canvas and dropped at once. */
"use strict";

const K = { view: null, guidance: null, health: null, lastActivity: 0 };
const $ = (id) => document.getElementById(id);

function show(screen) {
  let found = false;
  for (const s of document.querySelectorAll("[data-screen]")) {
    const on = s.dataset.screen === screen;
    s.classList.toggle("active", on);
    found = found || on;
  }
  if (!found) document.querySelector('[data-screen="error"]').classList.add("active");
  document.body.dataset.screen = screen;
}

function renderParts(health) {
  const ul = $("parts");
  ul.replaceChildren();
  if (!health || !health.parts) return;
  for (const [part, state] of Object.entries(health.parts)) {
    const li = document.createElement("li");
    const p = UI.PARTS[part] || [part, part];
    const s = UI.STATES[state] || [state, state];
    li.textContent = `${p[0]} ${p[1]}: ${s[0]} / ${s[1]}`;
    ul.append(li);
  }
}

function fillList(ul, items) {
  ul.replaceChildren();
  for (const item of items) {
    const li = document.createElement("li");
    if (typeof item === "string") li.textContent = item; else li.append(item);
    ul.append(li);
  }
}

// only what the kiosk verified (the matter's signature, the PAD's enrollment, each license
// deposit and its issuer's enrollment) is shown, and it is what gets signed
function renderMatter(m) {
  if (!m) return;
  $("c-title").textContent = m.title;
  $("c-office").textContent = m.office;
  fillList($("c-agencies"), m.agencies || []);
  $("c-purpose").textContent = m.purpose;
  $("c-enterprise").textContent = m.enterprise || "";
  $("c-enterprise").hidden = $("c-enterprise-label").hidden = !m.enterprise;
  fillList($("c-licenses"), (m.licenses || []).map((lic) => {
    const k = kindText(lic.kind);
    const frag = bi(k[0], k[1]);
    const by = document.createElement("span"); by.className = "issuer";
    by.textContent = ` — ${lic.issuer}`;
    frag.append(by);
    return frag;
  }));
  $("c-use-until").textContent = fmtTime(m.use_until);
}

function renderClerk(c) {
  if (!c) return;
  const qr = "/api/qr?text=" + encodeURIComponent(c.qr);
  if ($("k-qr").getAttribute("src") !== qr) $("k-qr").setAttribute("src", qr);
  $("k-code").textContent = c.code;
  $("k-waiting").hidden = !!c.checking;
  $("k-checking").hidden = !c.checking;
}

function renderReceipt(r) {
  if (!r) return;
  $("r-tx").textContent = r.tx_id;
  $("r-height").textContent = String(r.height);
  $("r-time").textContent = fmtTime(r.time_ms);
  $("r-title").textContent = r.title || "";
  $("r-office").textContent = r.office || "";
  $("r-agencies").textContent = (r.agencies || []).join("、");
  $("r-use-until").textContent = fmtTime(r.use_until);
  setBi($("r-way"), r.way === "clerk" ? "工作人员核验身份证" : "刷脸核验",
        r.way === "clerk" ? "a clerk checked the ID card" : "face verification");
  const qr = "/api/qr?text=" + encodeURIComponent(r.qr || r.tx_id);
  if ($("r-qr").getAttribute("src") !== qr) $("r-qr").setAttribute("src", qr);
}

function renderError(e) {
  if (!e) { setBi($("e-title"), "出错了", "Something went wrong"); $("e-message").textContent = ""; return; }
  setBi($("e-title"), e.title_zh || "出错了", e.title_en || "Something went wrong");
  setBi($("e-message"), e.message_zh || "", e.message_en || "");
}

function renderBlocked(v) {
  // why authorizations are refused comes with the view (an equivocation alarm, a failing
  // audit log, a chain that cannot carry them); the page's own words are the fallback
  const e = v.error;
  if (e && e.title_zh) {
    setBi($("b-title"), e.title_zh, e.title_en || "");
    setBi($("b-message"), e.message_zh || "", e.message_en || "");
  }
  $("alarm").textContent = v.alarm && v.alarm.detail ? v.alarm.detail : "";
}

function renderCapture() {
  const cap = (K.view && K.view.capture) || {};
  const g = K.guidance || {};
  const ch = challengeOf(g.challenge !== undefined ? g.challenge : cap.challenge);
  const el = $("challenge");
  if (ch && ch.action) {
    const t = UI.CHALLENGES[ch.action] || [ch.text_zh || ch.action, ch.text_en || ch.action];
    setBi(el, ch.text_zh || t[0], ch.text_en || t[1]);
  } else {
    setBi(el, "请正对摄像头，把脸放进椭圆框内", "Look at the camera and fit your face in the oval");
  }
  const hints = g.hints !== undefined ? g.hints : (cap.hints || []);
  const ul = $("hints");
  ul.replaceChildren();
  for (const h of hints || []) {
    const li = document.createElement("li");
    const t = hintText(h);
    li.append(bi(t[0], t[1]));
    ul.append(li);
  }
  const oval = g.oval;
  const svg = document.querySelector(".oval");
  if (oval && typeof oval.cx === "number") {
    const e = $("oval");  // fractions of the frame -> the 640x480 viewBox
    e.setAttribute("cx", String(oval.cx * 640)); e.setAttribute("cy", String(oval.cy * 480));
    e.setAttribute("rx", String(oval.rx * 640)); e.setAttribute("ry", String(oval.ry * 480));
  }
  // green when a face is seen and the quality gate has nothing to say
  svg.classList.toggle("good", !!(oval && oval.face) && (hints || []).length === 0);
  const prog = g.progress !== undefined ? g.progress : cap.progress;
  const box = $("progress");
  box.replaceChildren();
  let total = 0, done = 0;
  if (prog && typeof prog === "object") { total = prog.total || 0; done = prog.done !== undefined ? prog.done : (prog.index || 0); }
  if (ch && ch.total) total = ch.total;
  for (let i = 0; i < total; i++) {
    const s = document.createElement("span");
    if (i < done) s.className = "done";
    box.append(s);
  }
}

function render() {
  const v = K.view;
  if (!v) return;
  show(v.screen);
  if (v.screen === "starting") renderParts(K.health);
  if (v.matter) renderMatter(v.matter);
  if (v.screen === "receipt") renderReceipt(v.receipt);
  if (v.screen === "error") renderError(v.error);
  if (v.screen === "capture") renderCapture();
  if (v.screen === "blocked") renderBlocked(v);
  if (v.screen === "clerk") renderClerk(v.clerk);
  $("cancel").hidden = !v.can_cancel;
  if (v.screen !== "scan") $("matter-text").value = "";
  if (v.screen !== "clerk") $("confirmation-text").value = "";
  tick();
}

function tick() {
  const v = K.view;
  const clock = $("clock"), warn = $("warn");
  if (!v || !v.deadline_ms) { clock.hidden = true; warn.hidden = true; return; }
  const now = Date.now();
  const left = Math.max(0, Math.ceil((v.deadline_ms - now) / 1000));
  clock.hidden = false;
  clock.textContent = `${left} s`;
  const warning = v.warn_at_ms && now >= v.warn_at_ms;
  warn.hidden = !warning;
  $("warn-left").textContent = `${left} s`;
  $("extend").hidden = !v.can_extend;
}

function onMessage(msg) {
  if (msg.health) { K.health = msg.health; $("status").textContent = msg.health.ready ? "" : "…"; }
  if (msg.type === "hello") {
    if (msg.elder_mode && !document.body.dataset.elderSet) setElder(true);
    K.view = msg.view; K.guidance = msg.guidance; render();
  } else if (msg.type === "view") {
    K.view = msg.view;
    if (msg.view.screen !== "capture") K.guidance = null;
    render();
  } else if (msg.type === "guidance") {
    K.guidance = msg;
    if (K.view && K.view.screen === "capture") renderCapture();
  } else if (msg.type === "health") {
    if (K.view && K.view.screen === "starting") renderParts(K.health);
  }
}

let drawing = false;
function onFrame(blob) {
  if (drawing || !K.view || K.view.screen !== "capture") return;
  drawing = true;
  createImageBitmap(blob).then((bmp) => {
    const c = $("preview");
    c.getContext("2d").drawImage(bmp, 0, 0, c.width, c.height);
    bmp.close();
  }).catch(() => {}).finally(() => { drawing = false; });
}

function setElder(on) {
  document.body.classList.toggle("elder", on);
  document.body.dataset.elderSet = "1";
  $("elder").setAttribute("aria-pressed", on ? "true" : "false");
}

async function send(type, extra, button) {
  if (button) button.disabled = true;
  try { await postEvent(type, extra); }
  catch (e) { $("status").textContent = `${e.status || ""} ${e.message}`; }
  finally { if (button) setTimeout(() => { button.disabled = false; }, 400); }
}

document.addEventListener("DOMContentLoaded", async () => {
  await loadHints();
  for (const b of document.querySelectorAll("button[data-event]")) {
    b.addEventListener("click", () => send(b.dataset.event, null, b));
  }
  $("elder").addEventListener("click", () => setElder(!document.body.classList.contains("elder")));
  $("matter-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("matter-text").value.trim();
    if (text) send("matter_text", { text: text });
  });
  $("confirmation-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("confirmation-text").value.trim();
    if (text) send("confirmation_text", { text: text });
  });
  document.addEventListener("pointerdown", () => {
    const s = K.view && K.view.screen;
    if (!s || s === "attract" || s === "starting") return;
    const now = Date.now();
    if (now - K.lastActivity > 3000) { K.lastActivity = now; postEvent("activity").catch(() => {}); }
  });
  setInterval(tick, 250);
  try {
    const st = await api("/api/state");
    K.health = st.health;
    if (st.elder_mode) setElder(true);
    K.view = st.view; K.guidance = st.guidance; render();
  } catch (e) { /* the WebSocket brings it */ }
  connect("kiosk", onMessage, onFrame);
});
