/* Shared by the kiosk and PAD pages: the API, the WebSocket, bilingual texts. No storage:
   nothing is written to localStorage, cookies or IndexedDB. The one cookie is the server's
   session (HttpOnly, set when the terminal's browser opened its launch URL): same-origin
   fetches and the WebSocket carry it; a 401 means this page's session is gone (the daemon
   restarted with a new secret): the page reloads into the "open from the terminal's own
   browser" page rather than show a screen that no longer works. */
"use strict";

const UI = {
  SCREENS: {
    starting: ["系统启动中", "Starting"],
    attract: ["待机", "Waiting for a citizen"],
    scan: ["扫描事项二维码", "Scanning the matter QR"],
    checking: ["核验事项", "Checking the matter"],
    consent: ["确认授权", "Consent"],
    clerk: ["工作人员核验身份证", "Clerk checks the ID card"],
    capture: ["刷脸核验", "Face capture"],
    verifying: ["身份核验中", "Verifying identity"],
    signing: ["签署中", "Signing"],
    submitting: ["提交中", "Submitting"],
    waiting: ["等待上链", "Waiting for the block"],
    receipt: ["授权成功", "Receipt"],
    error: ["出错", "Error"],
    blocked: ["暂停授权", "Blocked (alarm)"],
  },
  CHALLENGES: {
    blink: ["请眨眨眼", "Please blink"],
    turn_left: ["请向左转头，再转回来", "Turn your head to your left, then back"],
    turn_right: ["请向右转头，再转回来", "Turn your head to your right, then back"],
  },
  PARTS: { node: ["区块链节点", "Light node"], hsm: ["密码模块", "Crypto module"],
           kiosk: ["授权流程", "Authorization flow"] },
  STATES: { starting: ["启动中", "starting"], ready: ["就绪", "ready"],
            serving: ["就绪", "serving"], restarting: ["重启中", "restarting"] },
  // license kinds as issuers deposit them; an unknown kind is shown as it is
  KINDS: {
    resident_id_card: ["居民身份证", "Resident ID card"],
    household_register: ["户口簿", "Household register"],
    real_estate_certificate: ["不动产权证书", "Real-estate certificate"],
    business_license: ["营业执照", "Business license"],
    marriage_certificate: ["结婚证", "Marriage certificate"],
    residence_permit: ["居住证", "Residence permit"],
  },
  hints: {},
};

function kindText(kind) {
  const k = UI.KINDS[kind];
  return k ? [k[0], k[1]] : [String(kind), String(kind)];
}

function bi(zh, en) {
  const frag = document.createDocumentFragment();
  const a = document.createElement("span"); a.className = "zh"; a.textContent = zh;
  const b = document.createElement("span"); b.className = "en"; b.textContent = en;
  frag.append(a, b);
  return frag;
}

function setBi(el, zh, en) { el.replaceChildren(bi(zh, en)); }

function sessionGone() { location.replace(location.pathname); }

async function api(path, options) {
  const resp = await fetch(path, Object.assign({ cache: "no-store", credentials: "same-origin" },
                                               options || {}));
  if (resp.status === 401) sessionGone();
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const err = new Error((body && body.message) || resp.statusText);
    err.status = resp.status; err.body = body;
    throw err;
  }
  return body;
}

function postEvent(type, extra) {
  const ev = Object.assign({ type: type }, extra || {});
  return api("/api/event", { method: "POST", headers: { "Content-Type": "application/json" },
                             body: JSON.stringify(ev) });
}

function connect(page, onMessage, onFrame) {
  let delay = 250;
  function open() {
    // page: "kiosk" or "pad"; preview frames come to the kiosk page's socket only
    const ws = new WebSocket(`ws://${location.host}/api/ws?page=${page}`);
    ws.binaryType = "blob";
    ws.onopen = () => { delay = 250; };
    ws.onmessage = (m) => {
      if (typeof m.data === "string") onMessage(JSON.parse(m.data));
      else if (onFrame) onFrame(m.data);
    };
    ws.onclose = () => {
      // a refused handshake does not say why: ask whether the session is still good
      fetch("/api/state", { method: "HEAD", cache: "no-store", credentials: "same-origin" })
        .then((r) => { if (r.status === 401) sessionGone(); }).catch(() => {});
      setTimeout(open, delay); delay = Math.min(delay * 2, 4000);
    };
  }
  open();
}

function fmtTime(ms) {
  if (ms === null || ms === undefined) return "";
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
         `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

async function loadHints() {
  try { UI.hints = await api("/api/hints"); } catch (e) { UI.hints = {}; }
}

function hintText(h) {
  if (h && typeof h === "object") {
    if (h.zh || h.en) return [h.zh || "", h.en || ""];
    h = h.code;
  }
  const t = UI.hints[h];
  return t ? [t.zh, t.en] : [String(h), String(h)];
}

function challengeOf(c) {
  if (!c) return null;
  if (typeof c === "string") return { action: c };
  if (typeof c === "object") return c;
  return null;
}
