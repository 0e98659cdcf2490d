// The page of `sefmodel serve`: sends each dropped image to POST /api/score (one request per image, so a folder
// shows progress and one bad file fails alone) and shows its record. Text from files and the server is written with
// textContent only, never parsed as HTML.
"use strict";

let info = null;
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

const fmt = (x) => Number(x).toFixed(3);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function init() {
  try {
    const response = await fetch("/api/info");
    info = await response.json();
  } catch (e) {
    $("detector").textContent = "error: cannot reach the server";
    return;
  }
  const fusion = { sef: "SEF gate", moe: "gated mixture of the experts", stack: "stacking", noisy_or: "noisy-OR" }[info.fusion] || info.fusion;
  const about = info.description
    ? `Detector: ${info.description.replaceAll("`", "")}; `
    : `Detector: ${info.backbone} backbone, experts ${info.experts.join(", ")} (fusion: ${fusion}), `;
  $("detector").textContent =
    about + `${info.image_size}-px crops. An image is called generated when P(generated) > ${info.threshold}` +
    (info.threshold_source === "default" ? "" : ` (${info.threshold_source})`) +
    (info.uncertain ? `, "uncertain" when ${info.uncertain[0]} ≤ P(generated) ≤ ${info.uncertain[1]}.` : ".");
  $("report-link").hidden = !info.report;
  const l = info.limits;
  $("limits").textContent =
    `${l.formats.join(", ")}; up to ${l.max_upload_mb} MiB per image and ${(l.max_pixels / 1e6).toFixed(0)} megapixels.`;
}

function isImageName(name) {
  const dot = name.lastIndexOf(".");
  return dot >= 0 && info.folder_extensions.includes(name.slice(dot).toLowerCase());
}

// Files of a drop; folders are walked (their non-image files left out, as `sefmodel predict DIR` does).
async function droppedFiles(dataTransfer) {
  const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry());
  if (entries.some((e) => !e)) return [...dataTransfer.files];
  const files = [];
  async function walk(entry, top) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      if (top || isImageName(file.name)) files.push(file);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, false);
      }
    }
  }
  for (const entry of entries) await walk(entry, true);
  return files;
}

function showError(card, message) {
  card.classList.add("failed");
  card.querySelector(".status").replaceWith(el("p", { class: "error", text: `error: ${message}` }));
}

function showRecord(card, record) {
  if (record.error) return showError(card, record.error);
  const generated = record.label === "generated";
  const band = info.uncertain;
  const why = record.label === "uncertain" ? `within the uncertain band ${band[0]}–${band[1]}` :
    `${generated ? ">" : "≤"} threshold ${info.threshold}`;
  const verdict = el("p", { class: "verdict" }, [
    el("span", { class: `label ${record.label}`, text: record.label }),
    " P(generated) ",
    el("span", { class: "prob", text: fmt(record.prob) }),
    " ",
    el("meter", { min: 0, max: 1, value: record.prob, low: info.threshold, high: info.threshold, optimum: 0 }),
    el("span", { class: "hint", text: ` ${why}` +
      (record.num_crops > 1 ? `, mean of ${record.num_crops} crops` : "") }),
  ]);
  const parts = [verdict];
  const ex = record.explain;
  if (record.gate_weights || ex) {
    const rows = [el("tr", {}, [el("th", { text: "expert" }), el("th", { text: "gate weight" }),
      el("th", { text: "expert's own P(generated)" })])];
    for (const name of info.experts) {
      const weight = record.gate_weights ? record.gate_weights[name] : undefined;
      rows.push(el("tr", { "data-expert": name }, [
        el("td", { text: name }),
        el("td", { class: "gate" }, weight === undefined ? ["n/a"] :
          [el("span", { class: "gate-value", text: fmt(weight) }), " ", el("meter", { min: 0, max: 1, value: weight })]),
        el("td", { class: "expert-prob", text: ex ? fmt(ex.expert_probs[name]) : "n/a" }),
      ]));
    }
    parts.push(el("table", { class: "gates" }, rows));
  }
  if (ex) {
    const figures = [el("figure", {}, [
      el("img", { class: "crop", src: ex.crop, alt: `the crop of ${record.path} the detector scored` }),
      el("figcaption", { text: `crop scored (${info.image_size}×${info.image_size} px)` }),
    ])];
    for (const [name, uri] of Object.entries(ex.heatmaps)) {
      const caption = name === "fused" ? `fused score, p=${fmt(record.prob)}` :
        `expert ${name}, p=${fmt(ex.expert_probs[name])}` +
        (record.gate_weights ? `, gate ${fmt(record.gate_weights[name])}` : "");
      figures.push(el("figure", {}, [
        el("img", { class: "heatmap", "data-map": name, src: uri, alt: `Grad-CAM heatmap: ${caption}` }),
        el("figcaption", { text: caption }),
      ]));
    }
    parts.push(el("div", { class: "maps" }, figures));
  }
  card.querySelector(".status").replaceWith(...parts);
}

async function scoreOne(file, card) {
  const limit = info.limits.max_upload_mb * 1024 * 1024;
  if (file.size > limit) {
    return showError(card, `too large: ${(file.size / 1048576).toFixed(1)} MiB, the limit is ${info.limits.max_upload_mb} MiB`);
  }
  const status = card.querySelector(".status");
  for (let attempt = 0; ; attempt++) {
    const body = new FormData();
    body.append("files", file, file.name);
    if (info.heatmaps) body.append("heatmaps", "1");
    let response;
    try {
      response = await fetch("/api/score", { method: "POST", body });
    } catch (e) {
      return showError(card, "the server did not answer (stopped, or the upload was refused)");
    }
    if (response.status === 503 && attempt < 30) {
      status.textContent = "the server is busy; retrying…";
      await sleep(1000);
      continue;
    }
    let data;
    try {
      data = await response.json();
    } catch (e) {
      data = { error: `HTTP ${response.status}` };
    }
    if (!response.ok) return showError(card, data.error || `HTTP ${response.status}`);
    return showRecord(card, data.records[0]);
  }
}

let queue = Promise.resolve();
let total = 0;
let done = 0;

function addFiles(files) {
  if (!files.length) return;
  $("progress-box").hidden = false;
  total += files.length;
  const update = () => {
    $("progress").max = total;
    $("progress").value = done;
    $("progress-text").textContent = `${done} of ${total} image(s) scored`;
  };
  update();
  for (const file of files) {
    const card = el("article", { class: "result", "data-name": file.name }, [
      el("h2", { class: "name", text: file.webkitRelativePath || file.name }),
      el("p", { class: "status", text: "waiting…" }),
    ]);
    $("results").append(card);
    queue = queue.then(async () => {
      card.querySelector(".status").textContent = "scoring…";
      await scoreOne(file, card);
      done += 1;
      update();
    });
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  await init();
  $("files").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  $("folder").addEventListener("change", (e) => {
    addFiles([...e.target.files].filter((f) => isImageName(f.name)));
    e.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles(await droppedFiles(e.dataTransfer));
  });
});
