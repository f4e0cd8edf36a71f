// The page of `mritumor serve`: everything it loads comes from this server (see the CSP).
"use strict";

const $ = (id) => document.getElementById(id);
let cards = [];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node; // text goes in as text nodes only: file names cannot inject markup
}

function headers() {
  const token = $("token").value.trim() || sessionStorage.getItem("mritumor-token") || "";
  return token ? { Authorization: "Bearer " + token } : {};
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadModels() {
  const health = await fetch("/health").then((r) => r.json());
  $("version").textContent = "version " + health.version;
  const response = await fetch("/models", { headers: headers() });
  if (response.status === 401) {
    $("token-label").hidden = false;
    setStatus("This server needs a token: enter it, then choose files.", false);
    return;
  }
  const body = await response.json();
  cards = body.models;
  const select = $("model");
  select.replaceChildren(...cards.map((c) => el("option", { value: c.name }, `${c.name} (${c.description})`)));
  showCard();
}

function showCard() {
  const card = cards.find((c) => c.name === $("model").value);
  const section = $("card");
  if (!card) return section.replaceChildren();
  const rows = [
    ["Task", card.description],
    ["Types", (card.types || []).join(", ") || "—"],
    ["Grades", (card.grades || []).join(", ") || "—"],
    ["Input", `${card.input.image_size} px, ${card.input.channels} channel(s)` + (card.input.bag_size ? `, bags of ${card.input.bag_size} slices` : "")],
    ["Training data", `${card.training_data.source || "?"}: ` + Object.entries(card.training_data.patients).map(([k, v]) => `${v} ${k}`).join(", ") + " patients"],
  ];
  const metrics = card.test_metrics || {};
  for (const [name, value] of Object.entries(metrics)) {
    if (value && typeof value === "object" && "value" in value) {
      rows.push([name.replaceAll("_", " "), `${fmt(value.value)} (95% CI ${fmt(value.low)}–${fmt(value.high)})`]);
    }
  }
  const list = el("dl", { class: "card" });
  for (const [k, v] of rows) list.append(el("dt", {}, k), el("dd", {}, v));
  section.replaceChildren(el("h2", {}, "Model " + card.name), list);
}

const fmt = (x) => (typeof x === "number" ? x.toFixed(3) : String(x));

function bars(title, probabilities, predicted) {
  const grid = el("div", { class: "bars" });
  for (const [name, p] of Object.entries(probabilities)) {
    const bar = el("div", { class: "bar" + (name === predicted ? " top" : "") }, el("div", { style: `width:${(100 * p).toFixed(1)}%` }));
    grid.append(el("span", {}, name), bar, el("span", { class: "num" }, (100 * p).toFixed(1) + " %"));
  }
  return [el("h3", {}, title), grid];
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("image could not be decoded"));
    image.src = src;
  });
}

// The slice the model saw is a centred square (zero-padded, resized); masks come at the
// original (H, W): they are drawn back into that square.
async function drawSlice(canvas, slice) {
  const ctx = canvas.getContext("2d");
  const side = canvas.width;
  ctx.imageSmoothingEnabled = false; // pixels as the model saw them, mask edges where they are
  if (slice.image_png) ctx.drawImage(await loadImage(slice.image_png), 0, 0, side, side);
  const layers = [];
  if (slice.mask_png) {
    const mask = await loadImage(slice.mask_png);
    const big = Math.max(mask.width, mask.height);
    const scale = side / big;
    const tint = document.createElement("canvas");
    tint.width = mask.width;
    tint.height = mask.height;
    const t = tint.getContext("2d");
    t.drawImage(mask, 0, 0);
    const pixels = t.getImageData(0, 0, mask.width, mask.height);
    for (let i = 0; i < pixels.data.length; i += 4) {
      const on = pixels.data[i] > 127;
      pixels.data.set(on ? [255, 40, 40, 120] : [0, 0, 0, 0], i);
    }
    t.putImageData(pixels, 0, 0);
    ctx.drawImage(tint, ((big - mask.width) / 2) * scale, ((big - mask.height) / 2) * scale, mask.width * scale, mask.height * scale);
    layers.push("mask");
  }
  if (slice.heatmap_png) {
    ctx.drawImage(await loadImage(slice.heatmap_png), 0, 0, side, side);
    layers.push("heatmap");
  }
  canvas.dataset.rendered = layers.join(" ") || "image";
}

function sliceTable(slices) {
  const keys = [...new Set(slices.flatMap((s) => Object.keys(s)))].filter(
    (k) => !k.endsWith("_png") && k !== "type_probabilities" && k !== "heatmap_method",
  );
  const table = el("table", { id: "slice-table" }, el("tr", {}, ...keys.map((k) => el("th", {}, k.replaceAll("_", " ")))));
  for (const s of slices) {
    table.append(el("tr", {}, ...keys.map((k) => el("td", { class: typeof s[k] === "number" ? "num" : "" }, s[k] === undefined ? "" : fmt(s[k])))));
  }
  return table;
}

// The checkpoint's out-of-distribution flag (absent or null for checkpoints without one).
function oodWarning(record) {
  const inside = record.in_distribution;
  if (inside === undefined || inside === null) {
    return record.uncertainty_note ? el("p", { class: "muted", id: "ood-none" }, record.uncertainty_note) : null;
  }
  if (inside) return el("p", { class: "muted", id: "ood-ok" }, "The input looks like the training data (no out-of-distribution flag).");
  const detail = ` (score ${fmt(record.ood_score)} above the threshold ${fmt(record.ood_threshold)} that keeps 95 % of the validation patients)`;
  return el("p", { class: "warning", id: "ood-warning" },
    "Warning: this input is unlike the data the model was trained on; its prediction may be unreliable." + detail);
}

function predictionSet(record) {
  const members = record.type_prediction_set;
  if (!members) return null;
  const grades = record.grade_prediction_set ? ["; grade: ", ...record.grade_prediction_set.map((m) => el("span", { class: "set" }, m))] : [];
  return el("p", { id: "prediction-set" }, "Prediction set: ", ...members.map((m) => el("span", { class: "set" }, m)), ...grades,
    record.set_coverage ? ` (covers the true type ${fmt(100 * record.set_coverage)} % of the time)` : "");
}

function tumourSize(record) {
  if (record.tumour_area_mm2 === undefined || record.tumour_area_mm2 === null) {
    return `Predicted tumour area: ${record.tumour_area_px} px` + (record.size_note ? ` (${record.size_note})` : "");
  }
  const volume = record.tumour_volume_ml !== null && record.tumour_volume_ml !== undefined ? `, volume ${fmt(record.tumour_volume_ml)} mL` : "";
  return `Predicted tumour area: ${fmt(record.tumour_area_mm2)} mm² (${record.tumour_area_px} px)${volume}`;
}

async function render(document_) {
  const section = $("result");
  section.replaceChildren();
  for (const record of document_.patients) {
    const block = el("div", { class: "patient" }, el("h2", {}, `Patient ${record.patient_id}`),
      el("p", { class: "muted" }, `${record.n_slices_used} of ${record.n_slices} slice(s) used`));
    if (record.predicted_type) {
      block.append(el("p", {}, "Predicted type: ", el("span", { class: "predicted", id: "predicted-type" }, record.predicted_type)));
    }
    block.append(oodWarning(record) || "", predictionSet(record) || "");
    if (record.type_probabilities) block.append(...bars("Type probabilities", record.type_probabilities, record.predicted_type));
    if (record.grade_probabilities) {
      block.append(el("p", {}, "Predicted grade: ", el("span", { class: "predicted", id: "predicted-grade" }, record.predicted_grade)));
      block.append(...bars("Grade probabilities (end to end)", record.grade_probabilities, record.predicted_grade));
    }
    if (record.sequence_warning) block.append(el("p", { class: "warning", id: "sequence-warning" }, `Sequence: ${record.sequence_warning}.`));
    if (record.tumour_area_px !== undefined) block.append(el("p", {}, tumourSize(record)));
    if (record.segmentation_dicom) {
      block.append(el("p", {}, el("a", { href: record.segmentation_dicom, download: record.segmentation_name, id: "segmentation-download" }, `Download the DICOM SEG (${record.segmentation_name})`)));
    } else if (record.segmentation_note) block.append(el("p", { class: "muted" }, record.segmentation_note));
    if (record.tumour_found === false && record.predicted_type !== "no_tumour") block.append(el("p", { class: "warning", id: "no-tumour-found" }, "No tumour outlined in any slice: the type answer has no outlined tumour behind it."));
    if (record.abstain_reason) block.append(el("p", { class: "warning", id: "abstain-reason" }, `Answered "uncertain": ${record.abstain_reason}.`));
    const figures = el("div", { class: "slices" });
    const drawings = [];
    for (const slice of record.slices) {
      const canvas = el("canvas", { width: 160, height: 160, class: "slice" });
      const caption = [slice.name];
      if (slice.attention_weight !== undefined) caption.push(`attention ${fmt(slice.attention_weight)}`);
      if (slice.heatmap_method) caption.push(slice.heatmap_method);
      figures.append(el("figure", {}, canvas, el("figcaption", {}, caption.join(" · "))));
      drawings.push(drawSlice(canvas, slice));
    }
    block.append(el("h3", {}, "Slices"), figures, el("h3", {}, "Per slice"), sliceTable(record.slices));
    section.append(block);
    await Promise.all(drawings);
  }
  for (const skipped of document_.skipped || []) section.append(el("p", { class: "warning" }, `${skipped.patient_id} skipped: ${skipped.reason}`));
  section.hidden = false;
}

async function submit(event) {
  event.preventDefault();
  const files = $("files").files;
  if (!files.length) return setStatus("Choose files first.", true);
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  form.append("model", $("model").value);
  form.append("images", "true");
  if ($("explain").checked) form.append("explain", "true");
  if ($("token").value.trim()) sessionStorage.setItem("mritumor-token", $("token").value.trim());
  $("submit").disabled = true;
  setStatus(`Predicting ${files.length} file(s)…`, false);
  const started = performance.now();
  try {
    const response = await fetch("/predict", { method: "POST", body: form, headers: headers() });
    const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      setStatus(body.error + (retry ? ` (retry in ${retry} s)` : ""), true);
      return;
    }
    await render(body);
    setStatus(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`, false);
  } catch (error) {
    setStatus("The request failed: " + error.message, true);
  } finally {
    $("submit").disabled = false;
  }
}

$("upload").addEventListener("submit", submit);
$("model").addEventListener("change", showCard);
$("token").addEventListener("change", () => loadModels().catch((e) => setStatus(e.message, true)));
loadModels().catch((error) => setStatus("Could not reach the server: " + error.message, true));
