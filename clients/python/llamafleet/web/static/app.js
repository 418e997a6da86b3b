// llamafleet web UI: vanilla JS, no build step, nothing loaded from outside.
// The page keeps no job state of its own: jobs and their events come from the training service.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

// ---- API --------------------------------------------------------------------------------
function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) sessionStorage.setItem("llamafleet-token", decodeURIComponent(m[1]));
  return sessionStorage.getItem("llamafleet-token") || "";
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  const opts = body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: res.statusText }; }
  if (res.status === 401) {
    const t = prompt("This llamafleet web UI needs its token:");
    if (t) { sessionStorage.setItem("llamafleet-token", t); return api(path, body); }
  }
  if (!res.ok) {
    const err = new Error((data && data.error) || ("HTTP " + res.status));
    err.status = res.status; err.code = data && data.code;
    throw err;
  }
  return data;
}

function showError(el, err) {
  if (!err) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.textContent = (err.code ? err.code + ": " : "") + err.message;
}

function debounce(fn, ms) {
  let t = null;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

// ---- tabs -------------------------------------------------------------------------------
let currentTab = "train";
function showTab(name) {
  currentTab = name;
  for (const b of $$("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of $$(".tab")) s.hidden = s.id !== "tab-" + name;
  if (name === "jobs") refreshJobs();
  if (name === "chat") refreshModels();
  if (name === "cluster") refreshCluster();
  if (name === "rewards") refreshRewards();
}
for (const b of $$("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));

// ---- Train ------------------------------------------------------------------------------
const form = $("#train-form");

function formValues() {
  const out = {};
  for (const input of $$("[name]", form)) {
    const box = input.closest("[data-method],[data-stage]");
    if (box && box.hidden) continue;
    if (input.type === "checkbox") out[input.name] = input.checked;
    else if (input.type === "number") out[input.name] = input.value === "" ? "" : Number(input.value);
    else out[input.name] = input.value;
  }
  return out;
}

function applyVisibility() {
  const stage = $("#stage-select").value, method = $("#method-select").value;
  for (const d of $$("[data-method]", form)) d.hidden = d.dataset.method !== method;
  // data-stage lists the stages a box applies to ("ppo grpo": both online RL stages)
  for (const d of $$("[data-stage]", form)) d.hidden = !d.dataset.stage.split(" ").includes(stage);
}

async function loadDatasets() {
  const dir = form.elements.dataset_dir.value.trim();
  const select = $("#dataset-select");
  const keep = select.value;
  select.replaceChildren();
  if (!dir) return;
  try {
    const { datasets } = await api("/api/datasets?dataset_dir=" + encodeURIComponent(dir));
    for (const d of datasets) {
      const kind = d.ranking ? d.formatting + ", pairs" : d.formatting;
      select.append(el("option", { value: d.name, textContent: `${d.name} (${kind})` }));
    }
    if (datasets.some((d) => d.name === keep)) select.value = keep;
    showError($("#preview-error"), null);
  } catch (err) {
    showError($("#preview-error"), err);
  }
}

async function updatePreview() {
  const v = formValues();
  const box = $("#preview");
  if (!v.model_name_or_path || !v.dataset) { box.textContent = "Pick a model and a dataset."; return; }
  try {
    const p = await api("/api/preview", v);
    box.replaceChildren();
    for (const s of p.sequences) {
      const pre = el("pre", { class: "rendered" });
      for (const seg of s.segments) pre.append(el("span", { class: seg.trained ? "trained" : "masked", textContent: seg.text }));
      const title = (s.name ? s.name + ": " : "") + `${s.tokens} tokens, ${s.trained_tokens} trained` + (s.truncated ? " (truncated)" : "");
      box.append(el("div", { class: "seq" }, el("h4", { textContent: title }), pre));
    }
    $("#preview-meta").textContent = `first record, kind ${p.kind}; highlighted = trained`;
    showError($("#preview-error"), null);
  } catch (err) {
    box.textContent = "";
    showError($("#preview-error"), err);
  }
}

let yamlText = "";
async function updateYaml() {
  try {
    const r = await api("/api/yaml", formValues());
    yamlText = r.yaml;
    $("#yaml").textContent = r.yaml + (r.notes.length ? "\n# " + r.notes.join("\n# ") : "");
    const link = $("#yaml-download");
    if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([r.yaml], { type: "application/x-yaml" }));
    showError($("#yaml-error"), null);
    return true;
  } catch (err) {
    yamlText = "";
    showError($("#yaml-error"), err);
    return false;
  }
}

const refreshTrain = debounce(() => { updateYaml(); updatePreview(); }, 250);
form.addEventListener("input", (e) => {
  if (e.target.name === "stage" || e.target.name === "finetuning_type") applyVisibility();
  if (e.target.name === "dataset_dir") loadDatasets().then(refreshTrain);
  else refreshTrain();
});
form.addEventListener("change", refreshTrain);
form.addEventListener("submit", (e) => e.preventDefault());

$("#start").addEventListener("click", async () => {
  const out = $("#start-result");
  out.textContent = "";
  if (!(await updateYaml())) return;
  try {
    const r = await api("/api/jobs", { yaml: yamlText });
    out.replaceChildren(el("span", { class: "ok", textContent: `job ${r.job.id}: ${r.job.state}` }));
    selectedJob = r.job.id;
    resetJobView();
    showTab("jobs");
  } catch (err) {
    showError($("#yaml-error"), err);
  }
});

async function initTrain() {
  const info = await api("/api/info");
  for (const s of info.stages) $("#stage-select").append(el("option", { value: s, textContent: s }));
  for (const m of info.methods) $("#method-select").append(el("option", { value: m, textContent: m }));
  for (const [k, v] of Object.entries(info.defaults)) {
    const input = form.elements[k];
    if (!input || input.tagName === undefined) continue;
    if (input.type === "checkbox") input.checked = !!v; else input.value = v;
  }
  applyVisibility();
  await loadDatasets();
  refreshTrain();
}

// ---- Jobs -------------------------------------------------------------------------------
let selectedJob = null, afterSeq = 0, points = [], evalPoints = [], lastState = "";

function resetJobView() {
  afterSeq = 0; points = []; evalPoints = []; lastState = "";
  $("#job-logs").textContent = "";
  drawChart();
}

async function refreshJobs() {
  try {
    const { jobs } = await api("/api/jobs");
    const body = $("#jobs-table tbody");
    body.replaceChildren();
    for (const j of jobs) {
      const step = j.total_steps ? `${j.step}/${j.total_steps}` : String(j.step);
      const tr = el("tr", { "data-job": j.id, class: j.id === selectedJob ? "selected" : "" },
        el("td", { textContent: j.id }),
        el("td", {}, el("span", { class: "state " + j.state, textContent: j.state })),
        el("td", { textContent: `${j.stage}/${j.method}` }),
        el("td", { textContent: step }),
        el("td", { textContent: j.loss == null ? "-" : j.loss.toFixed(4) }),
        el("td", { textContent: j.created.replace("T", " ").replace("+00:00", "Z") }));
      tr.addEventListener("click", () => { selectedJob = j.id; resetJobView(); refreshJobs(); pollJob(); });
      body.append(tr);
    }
    if (!selectedJob && jobs.length) { selectedJob = jobs[0].id; resetJobView(); pollJob(); }
  } catch (err) {
    showError($("#banner"), err);
  }
}

function describe(e) {
  const t = e.time ? e.time.slice(11, 19) : "";
  switch (e.kind) {
    case "state_change": return `${t} state ${e.state}${e.message ? ": " + e.message : ""}`;
    case "metrics": return `${t} step ${e.step}` + (e.loss != null ? ` loss ${e.loss.toFixed(4)}` : "")
      + (e.eval_loss != null ? ` eval_loss ${e.eval_loss.toFixed(4)}` : "") + ` lr ${e.learning_rate.toExponential(2)}`;
    case "log": return `${t} ${e.level} ${e.logger}: ${e.message}`;
    case "checkpoint_saved": return `${t} checkpoint step ${e.step}: ${e.path}`;
    case "adapter_published": return `${t} adapter v${e.version} published (step ${e.step})`;
    default: return `${t} ${e.kind}`;
  }
}

async function pollJob() {
  if (!selectedJob) return;
  const id = selectedJob;
  try {
    const r = await api(`/api/jobs/${encodeURIComponent(id)}/events?after=${afterSeq}`);
    if (id !== selectedJob) return;
    const logs = $("#job-logs");
    for (const e of r.events) {
      afterSeq = Math.max(afterSeq, e.sequence);
      if (e.kind === "metrics" && e.loss != null) points.push([e.step, e.loss]);
      if (e.kind === "metrics" && e.eval_loss != null) evalPoints.push([e.step, e.eval_loss]);
      logs.textContent += describe(e) + "\n";
    }
    if (r.events.length) { logs.scrollTop = logs.scrollHeight; drawChart(); }
    showJob(r.job);
  } catch (err) {
    showError($("#banner"), err);
  }
}

function showJob(j) {
  $("#job-title").textContent = j.id;
  const st = $("#job-state");
  st.textContent = j.state; st.className = "state " + j.state;
  $("#job-cancel").hidden = TERMINAL.has(j.state);
  const info = [`${j.stage}/${j.method} on ${j.base_model}`, `step ${j.step}${j.total_steps ? "/" + j.total_steps : ""}`];
  if (j.adapter_versions.length) info.push(`adapter versions: ${j.adapter_versions.join(", ")}`);
  const box = $("#job-info");
  box.replaceChildren(el("div", { textContent: info.join(" · ") }));
  if (j.failure_message) box.append(el("div", { class: "error", textContent: j.failure_message }));
  if (lastState && lastState !== j.state && TERMINAL.has(j.state)) refreshJobs();
  lastState = j.state;
}

$("#job-cancel").addEventListener("click", async () => {
  if (!selectedJob) return;
  try { showJob(await api(`/api/jobs/${encodeURIComponent(selectedJob)}/cancel`, {})); }
  catch (err) { showError($("#banner"), err); }
});
$("#jobs-refresh").addEventListener("click", refreshJobs);

function drawChart() {
  const svg = $("#loss-chart");
  const NS = "http://www.w3.org/2000/svg";
  const W = 640, H = 260, L = 56, R = 16, T = 16, B = 36;
  svg.replaceChildren();
  svg.setAttribute("data-points", String(points.length));
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  add("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "plot" });
  const all = points.concat(evalPoints);
  if (!all.length) { add("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "no loss yet"); return; }
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  let y0 = Math.min(...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.08; y0 -= pad; y1 += pad;
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    add("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "grid" });
    add("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end", class: "axis" }, y.toFixed(3));
  }
  const xs = [...new Set(all.map((p) => p[0]))];
  const step = Math.max(1, Math.ceil(xs.length / 8));
  xs.filter((_, i) => i % step === 0).forEach((x) =>
    add("text", { x: sx(x), y: H - B + 16, "text-anchor": "middle", class: "axis" }, String(x)));
  add("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "axis" }, "step");
  const series = [[points, "loss"], [evalPoints, "eval"]];
  for (const [pts, cls] of series) {
    if (!pts.length) continue;
    add("polyline", { points: pts.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), class: "line " + cls });
    for (const p of pts) add("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, class: "dot " + cls });
  }
  add("text", { x: W - R - 4, y: T + 14, "text-anchor": "end", class: "legend loss" }, "train loss");
  if (evalPoints.length) add("text", { x: W - R - 4, y: T + 28, "text-anchor": "end", class: "legend eval" }, "eval loss");
}

// ---- Chat -------------------------------------------------------------------------------
let conversation = [];

async function refreshModels() {
  const select = $("#chat-model");
  const keep = select.value;
  try {
    const { models } = await api("/api/models");
    select.replaceChildren(...models.map((m) => el("option", { value: m, textContent: m })));
    if (models.includes(keep)) select.value = keep;
    showError($("#chat-error"), null);
  } catch (err) {
    showError($("#chat-error"), err);
  }
}

function addBubble(role, text) {
  const log = $("#chat-log");
  log.append(el("div", { class: "msg " + role }, el("b", { textContent: role === "user" ? "you" : $("#chat-model").value }), el("span", { textContent: text })));
  log.scrollTop = log.scrollHeight;
}

$("#chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("#chat-input");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  conversation.push({ role: "user", content: text });
  addBubble("user", text);
  const button = $("#chat-send");
  button.disabled = true;
  try {
    const r = await api("/api/chat", {
      model: $("#chat-model").value, messages: conversation,
      max_tokens: Number($("#chat-max-tokens").value), temperature: Number($("#chat-temperature").value),
    });
    conversation.push({ role: "assistant", content: r.reply });
    addBubble("assistant", r.reply);
    showError($("#chat-error"), null);
  } catch (err) {
    conversation.pop();
    showError($("#chat-error"), err);
  } finally {
    button.disabled = false;
  }
});
$("#chat-clear").addEventListener("click", () => { conversation = []; $("#chat-log").replaceChildren(); });
$("#chat-models-refresh").addEventListener("click", refreshModels);

// ---- Cluster ----------------------------------------------------------------------------
async function refreshCluster() {
  try {
    const c = await api("/api/cluster");
    const body = $("#services-table tbody");
    body.replaceChildren();
    for (const [name, s] of Object.entries(c.services)) {
      body.append(el("tr", { "data-service": name }, el("td", { textContent: name }), el("td", { textContent: s.address }),
        el("td", { textContent: s.pid + (s.alive ? "" : " (dead)") }),
        el("td", {}, el("span", { class: "health " + s.health, textContent: s.health }))));
    }
    $("#cluster-redis").textContent = `redis: ${c.redis} (${c.redis_url})` + (c.base_model ? ` · base model: ${c.base_model}` : "");
    const q = $("#queues-table tbody");
    q.replaceChildren();
    for (const r of c.queues) {
      q.append(el("tr", {}, ...[r.stream, r.length, r.group, r.consumers, r.pending, r.lag == null ? "?" : r.lag]
        .map((v) => el("td", { textContent: String(v) }))));
    }
    if (!c.queues.length) q.append(el("tr", {}, el("td", { colSpan: 6, class: "muted", textContent: "no queues yet" })));
    $("#cluster-deadletters").textContent = `dead letters: ${c.dead_letters}`;
    showError($("#banner"), null);
  } catch (err) {
    showError($("#banner"), err);
  }
}
$("#cluster-refresh").addEventListener("click", refreshCluster);

// ---- Rewards ----------------------------------------------------------------------------
async function refreshRewards() {
  try {
    const r = await api("/api/reward/functions");
    const body = $("#rewards-table tbody");
    const select = $("#reward-function");
    const chosen = select.value;
    body.replaceChildren();
    select.replaceChildren();
    for (const f of r.functions) {
      const ok = f.available ? "yes" : "no: " + f.unavailable_reason;
      body.append(el("tr", { "data-function": f.name }, ...[f.name, f.kind, f.timeout_s + " s", ok, f.description]
        .map((v) => el("td", { textContent: String(v) }))));
      select.append(el("option", { value: f.name, textContent: f.name, disabled: !f.available }));
    }
    if (chosen) select.value = chosen;
    showError($("#banner"), null);
  } catch (err) {
    showError($("#banner"), err);
  }
}
$("#rewards-refresh").addEventListener("click", refreshRewards);
$("#reward-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = new FormData($("#reward-form"));
  const button = $("#reward-run");
  button.disabled = true;
  try {
    let args = {};
    if (f.get("args")) {
      try { args = JSON.parse(f.get("args")); } catch (e) { throw new Error("arguments: not JSON: " + e.message); }
    }
    const r = await api("/api/reward/test", { function: f.get("function"), args, prompt: f.get("prompt"),
      completion: f.get("completion"), reference: f.get("reference") });
    $("#reward-score").textContent = "reward: " + r.score;
    const body = $("#reward-parts tbody");
    body.replaceChildren();
    for (const c of r.components) {
      const subs = Object.entries(c.sub_scores).map(([k, v]) => `${k}=${v}`).join(", ");
      body.append(el("tr", {}, ...[c.label, c.weight, c.score, subs, c.detail].map((v) => el("td", { textContent: String(v) }))));
    }
    showError($("#reward-error"), null);
  } catch (err) {
    showError($("#reward-error"), err);
  } finally {
    button.disabled = false;
  }
});

// ---- Evaluate ---------------------------------------------------------------------------
function formBody(formEl) {
  const body = {};
  for (const [k, v] of new FormData(formEl).entries()) body[k] = v;
  return body;
}

async function runEval(formId, buttonId, errorId, path, show) {
  const button = $(buttonId);
  button.disabled = true;
  try {
    show(await api(path, formBody($(formId))));
    showError($(errorId), null);
  } catch (err) {
    showError($(errorId), err);
  } finally {
    button.disabled = false;
  }
}

$("#bench-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  runEval("#bench-form", "#bench-run", "#bench-error", "/api/eval/benchmark", (r) => {
    const body = $("#bench-table tbody");
    body.replaceChildren();
    const pct = (x) => (100 * x).toFixed(2);
    for (const [name, acc] of Object.entries(r.categories)) {
      body.append(el("tr", { class: "category" }, ...[name, "", "", pct(acc)].map((v) => el("td", { textContent: v }))));
    }
    for (const s of r.subjects) {
      body.append(el("tr", { "data-subject": s.subject }, ...[s.name, s.correct, s.total, pct(s.accuracy)]
        .map((v) => el("td", { textContent: String(v) }))));
    }
  });
});

$("#predict-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  runEval("#predict-form", "#predict-run", "#predict-error", "/api/eval/predict", (r) => {
    const body = $("#predict-table tbody");
    body.replaceChildren();
    for (const [name, value] of Object.entries(r)) {
      body.append(el("tr", { "data-metric": name }, el("td", { textContent: name }), el("td", { textContent: String(value) })));
    }
  });
});

// ---- timers -----------------------------------------------------------------------------
setInterval(() => {
  if (document.hidden) return;
  if (currentTab === "jobs") pollJob();
}, 1000);
setInterval(() => {
  if (document.hidden) return;
  if (currentTab === "jobs") refreshJobs();
  if (currentTab === "cluster") refreshCluster();
}, 3000);

initTrain().catch((err) => showError($("#banner"), err));
drawChart();
