/* The clerk's PAD: start a matter (signed in this PAD's crypto module, its QR rendered by the
   terminal), confirm a citizen's ID card for the kiosk's clerk way (signed with the staff
   card), verify a license document against the chain. */
"use strict";

const $ = (id) => document.getElementById(id);
let samples = [];

function addLicense(value, label_text, checked) {
  const label = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox"; box.value = value; box.checked = checked;
  label.append(box, document.createTextNode(label_text));
  $("m-licenses").append(label);
}

async function loadInfo() {
  try {
    const info = await api("/api/pad/info");
    setBi($("m-office"), `办理单位：${info.office}`, `Office: ${info.office}`);
  } catch (err) {
    setBi($("m-office"), `本终端暂不能出具事项：${err.message}`, `This PAD cannot issue matters: ${err.message}`);
  }
}

async function loadSamples() {
  const r = await api("/api/pad/samples");
  samples = r.samples;
  if (r.citizen_id && !$("m-citizen").value) $("m-citizen").value = r.citizen_id;
  samples.forEach((s) => {
    const holder = s.holder === "enterprise" ? " [企业 enterprise]" : "";
    addLicense(s.tx_id, `${s.name} — ${s.issuer}${holder}`, s.holder !== "enterprise");
    const o = document.createElement("option");
    o.value = String(s.index); o.textContent = `${s.name} (${s.filename})`;
    $("v-sample").append(o);
  });
}

async function createMatter(e) {
  e.preventDefault();
  $("m-error").textContent = "";
  $("m-result").hidden = true;
  const licenses = [...document.querySelectorAll("#m-licenses input:checked")].map((b) => b.value);
  const doc = { title: $("m-title").value, agencies: $("m-agencies").value,
                purpose: $("m-purpose").value, citizen_id: $("m-citizen").value,
                licenses: licenses, valid_minutes: Number($("m-minutes").value),
                use_days: Number($("m-days").value) };
  if ($("m-enterprise").value.trim()) doc.enterprise_id = $("m-enterprise").value.trim();
  try {
    const r = await api("/api/pad/matter", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(doc) });
    $("m-qr").setAttribute("src", r.qr_png);
    $("m-text").value = r.qr_text;
    $("m-result").hidden = false;
  } catch (err) {
    $("m-error").textContent = `无法生成 / Cannot make the matter: ${err.message}`;
  }
}

async function showSession(text) {
  $("c-error").textContent = "";
  $("c-result").hidden = true;
  try {
    const r = await api("/api/pad/session", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(text ? { text: text } : {}) });
    $("c-session").value = r.text;
    $("c-code").textContent = r.code;
    $("c-title").textContent = `${r.title} · ${r.citizen_hint}`;
    $("c-method").value = r.enterprise ? "id_card+registration" : "id_card";
    $("c-details").hidden = false;
    $("c-pin").focus();
  } catch (err) {
    $("c-details").hidden = true;
    $("c-error").textContent = `无法读取自助机二维码 / Cannot read the kiosk's code: ${err.message}`;
  }
}

async function confirmSession(e) {
  e.preventDefault();
  if ($("c-details").hidden) { await showSession($("c-session").value.trim()); return; }
  $("c-error").textContent = "";
  const pin = $("c-pin").value;
  $("c-pin").value = "";
  try {
    const r = await api("/api/pad/confirm", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: $("c-session").value.trim(), method: $("c-method").value, pin: pin }) });
    $("c-qr").setAttribute("src", r.qr_png);
    $("c-text").value = r.qr_text;
    $("c-result").hidden = false;
    $("c-details").hidden = true;
  } catch (err) {
    $("c-error").textContent = `未能签署确认 / Not confirmed: ${err.message}`;
  }
}

function dd(dl, zh, en, value, mono) {
  const dt = document.createElement("dt"); dt.append(bi(zh, en));
  const d = document.createElement("dd"); d.textContent = value;
  if (mono) d.className = "mono";
  dl.append(dt, d);
}

// The nodes that did not answer a lookup, and why (those that did are in the verdict).
function nodeRows(dl, nodes) {
  for (const n of nodes) {
    if (n.outcome === "failed") dd(dl, "未答复的节点", "Asked, no answer", `${n.url} (${n.reason})`);
    else if (n.outcome === "not_asked") dd(dl, "未询问的节点", "Not asked", `${n.url} (${n.reason})`);
  }
}

async function verify(e) {
  e.preventDefault();
  const form = new FormData();
  const file = $("v-file").files[0];
  if (file) form.append("file", file, file.name);
  else if ($("v-sample").value !== "") form.append("sample", $("v-sample").value);
  else return;
  const box = $("v-result"), verdict = $("v-verdict"), dl = $("v-hits");
  box.hidden = false; box.className = "card result";
  setBi(verdict, "核验中…", "Checking…"); dl.replaceChildren(); $("v-digest").textContent = "";
  try {
    const r = await api("/api/pad/verify", { method: "POST", body: form });
    $("v-digest").textContent = `SM3 ${r.digest}`;
    if (r.found) {
      box.classList.add("found");
      setBi(verdict, "链上已存证，证明已核验", "On chain: deposit verified");
      for (const h of r.hits) {
        dd(dl, "签发机构", "Issuer", h.issuer);
        dd(dl, "证照类型", "Kind", h.kind);
        dd(dl, "存证时间", "Deposited", fmtTime(h.time_ms));
        dd(dl, "区块高度", "Block height", String(h.height));
        dd(dl, "交易编号", "Transaction", h.tx_id, true);
      }
      dd(dl, "已验证链高度", "Verified chain height", String(r.verified_height));
    } else if (r.verdict === "not_found" && r.answered > 0) {
      // A negative answer is only the word of the nodes that gave it: name them.
      box.classList.add("missing");
      const by = r.peers.join(", ");
      const of = Math.max(r.known, r.answered);
      setBi(verdict, `链上未找到：已询问 ${of} 个节点中的 ${r.answered} 个：${by}`,
        `Not on chain: not found by ${r.answered} of ${of} nodes: ${by}`);
      nodeRows(dl, r.nodes);
      dd(dl, "已验证链高度", "Verified chain height", String(r.verified_height));
    } else {
      box.classList.add("missing");
      setBi(verdict, "无法核验", "Could not be checked");
      nodeRows(dl, r.nodes || []);
    }
  } catch (err) {
    box.classList.add("missing");
    setBi(verdict, "无法核验", "Could not be checked");
    dd(dl, "原因", "Reason", err.message);
  } finally {
    $("v-file").value = "";
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("elder").addEventListener("click", () => {
    const on = !document.body.classList.contains("elder");
    document.body.classList.toggle("elder", on);
    $("elder").setAttribute("aria-pressed", on ? "true" : "false");
  });
  $("matter-form").addEventListener("submit", createMatter);
  $("c-scan").addEventListener("click", () => showSession(""));
  $("c-form").addEventListener("submit", confirmSession);
  $("v-form").addEventListener("submit", verify);
  await loadInfo();
  await loadSamples().catch(() => {});
});
