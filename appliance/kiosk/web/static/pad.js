/* The clerk's PAD: start a matter (its QR rendered by the terminal), watch the citizen's
   progress, verify a license document against the chain. */
"use strict";

const $ = (id) => document.getElementById(id);
let samples = [];

function addLicense(value, name, checked) {
  const label = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox"; box.value = value; box.dataset.name = name; box.checked = checked;
  label.append(box, document.createTextNode(name));
  $("m-licenses").append(label);
}

async function loadSamples() {
  const r = await api("/api/pad/samples");
  samples = r.samples;
  if (r.subject_name && !$("m-citizen").value) $("m-citizen").value = r.subject_name;
  samples.forEach((s, i) => {
    addLicense(s.digest, s.name, i < 2);
    const o = document.createElement("option");
    o.value = String(s.index); o.textContent = `${s.name} (${s.filename})`;
    $("v-sample").append(o);
  });
}

async function createMatter(e) {
  e.preventDefault();
  $("m-error").textContent = "";
  const licenses = [...document.querySelectorAll("#m-licenses input:checked")]
    .map((b) => ({ id: b.value, name: b.dataset.name }));
  try {
    const r = await api("/api/pad/matter", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ matter: $("m-matter").value, agency: $("m-agency").value,
        office: $("m-office").value, citizen: $("m-citizen").value, licenses: licenses }) });
    $("m-qr").setAttribute("src", r.qr_png);
    $("m-text").value = r.qr_text;
    $("m-result").hidden = false;
  } catch (err) {
    $("m-error").textContent = `无法生成 / Cannot make the matter: ${err.message}`;
  }
}

async function sendToKiosk() {
  try { await postEvent("matter_text", { text: $("m-text").value }); }
  catch (err) { $("m-error").textContent = `${err.message}`; }
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

function onMessage(msg) {
  const v = msg.view;
  if (!v) return;
  const t = UI.SCREENS[v.screen] || [v.screen, v.screen];
  setBi($("p-screen"), t[0], t[1]);
  const parts = [];
  if (v.matter) parts.push(`${v.matter.matter} · ${v.matter.agency}`);
  if (v.receipt) parts.push(`tx ${v.receipt.tx_id} @ ${v.receipt.height}`);
  if (v.error) parts.push(`${v.error.code}: ${v.error.message_en}`);
  $("p-detail").textContent = parts.join("\n");
}

document.addEventListener("DOMContentLoaded", async () => {
  $("elder").addEventListener("click", () => {
    const on = !document.body.classList.contains("elder");
    document.body.classList.toggle("elder", on);
    $("elder").setAttribute("aria-pressed", on ? "true" : "false");
  });
  $("matter-form").addEventListener("submit", createMatter);
  $("m-send").addEventListener("click", sendToKiosk);
  $("v-form").addEventListener("submit", verify);
  await loadSamples().catch(() => {});
  connect("pad", onMessage, null);
});
