// instaseg serve: the page. Plain JavaScript, no build step, no network beyond this server.
// Overlays are drawn here from the API's JSON (COCO RLE masks; boxes for a model without masks;
// keypoints and the model's skeleton for a keypoint model), so the score slider, the class toggles
// and fills/outlines change the picture without a new request.
"use strict";

// The classes' colours: instaseg.viz.overlay.PALETTE (Tableau 10, then their light partners).
const PALETTE = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
  [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120],
  [152, 223, 138], [255, 152, 150], [197, 176, 213], [196, 156, 148], [247, 182, 210], [199, 199, 199],
  [219, 219, 141], [158, 218, 229]];
const FILL_ALPHA = 0.35;

const state = {
  threshold: 0.5, fill: true, outline: true, hiddenLabels: new Set(), classes: [],
  skeleton: [], keypointThreshold: 0,  // GET /v1/model's keypoints: limbs (0-based pairs), joints drawn above
  views: [],          // {canvas, image, instances, scored}: every overlay on the page, redrawn together
  reviewSort: "error", reviewClass: "", reviewTimer: null, reviewDone: -1, detailId: null,
};
const $ = (id) => document.getElementById(id);

// ---- COCO RLE -------------------------------------------------------------------------------
// Compressed counts (pycocotools' rleToString): 5-bit groups, value + 48, bit 0x20 = more groups,
// bit 0x10 of the last group = sign; from the third run on, the difference to the run two before.
function rleRuns(text) {
  const runs = [];
  let p = 0;
  while (p < text.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1; k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  return runs;
}

// (H, W) mask, row-major, from column-major runs (zeros first); its area and its outline pixels.
function decodeMask(rle) {
  const [h, w] = rle.size;
  const mask = new Uint8Array(h * w);
  let i = 0, value = 0, area = 0;
  for (const run of rleRuns(rle.counts)) {
    if (value) {
      for (let j = i; j < i + run; j++) mask[(j % h) * w + Math.floor(j / h)] = 1;
      area += run;
    }
    i += run; value ^= 1;
  }
  const edge = [];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const k = y * w + x;
      if (mask[k] && (x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
          !mask[k - 1] || !mask[k + 1] || !mask[k - w] || !mask[k + w])) edge.push(k);
    }
  }
  return {mask, area, edge, w, h};
}

// An instance without a mask (a boxes + keypoints model) is its box: area, no pixels.
function decoded(instance) {
  if (!instance._mask) {
    const [x1, y1, x2, y2] = instance.box;
    instance._mask = instance.mask ? decodeMask(instance.mask) : {mask: null, area: (x2 - x1) * (y2 - y1), edge: []};
  }
  return instance._mask;
}

function covers(instance, x, y, k) {
  const m = decoded(instance);
  if (m.mask) return m.mask[k] === 1;
  const [x1, y1, x2, y2] = instance.box;
  return x + 0.5 >= x1 && x + 0.5 <= x2 && y + 0.5 >= y1 && y + 0.5 <= y2;
}

// Boxes of the instances without masks, then limbs (class colour) and joints (white, ringed in
// black) of those with keypoints: a joint shows when its score (visibility for ground truth) is above
// the threshold, a limb when both its ends show. Keypoints are continuous: pixel i's centre is i + 0.5.
function drawBoxesAndKeypoints(ctx, shown, scored) {
  const width = Math.max(1, Math.ceil(Math.min(ctx.canvas.width, ctx.canvas.height) / 256));
  ctx.lineWidth = width;
  for (const d of shown) {
    const colour = `rgb(${PALETTE[d.label % PALETTE.length].join(",")})`;
    if (!d.mask && state.outline) {
      const [x1, y1, x2, y2] = d.box;
      ctx.strokeStyle = colour;
      ctx.strokeRect(x1 + width / 2, y1 + width / 2, Math.max(0, x2 - x1 - width), Math.max(0, y2 - y1 - width));
    }
    if (!d.keypoints) continue;
    const limit = scored ? state.keypointThreshold : 0;
    const on = d.keypoints.map((p) => p[2] > limit);
    ctx.strokeStyle = colour;
    for (const [a, b] of state.skeleton) {
      if (!on[a] || !on[b]) continue;
      ctx.beginPath();
      ctx.moveTo(d.keypoints[a][0], d.keypoints[a][1]);
      ctx.lineTo(d.keypoints[b][0], d.keypoints[b][1]);
      ctx.stroke();
    }
    ctx.fillStyle = "#fff"; ctx.strokeStyle = "#000";
    d.keypoints.forEach((p, k) => {
      if (!on[k]) return;
      ctx.beginPath();
      ctx.arc(p[0], p[1], width + 1.5, 0, 2 * Math.PI);
      ctx.fill(); ctx.stroke();
    });
  }
}

// ---- drawing --------------------------------------------------------------------------------
function visible(view) {
  return view.instances.filter((d) => !state.hiddenLabels.has(d.label) &&
    (!view.scored || d.score >= state.threshold));
}

function draw(view) {
  const {canvas, image} = view;
  if (!image) return;
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0);
  const shown = visible(view).sort((a, b) => decoded(b).area - decoded(a).area);  // small ones on top
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (const d of shown) {
    const m = decoded(d), colour = PALETTE[d.label % PALETTE.length];
    if (!m.mask || m.w !== canvas.width || m.h !== canvas.height) continue;
    if (state.fill) {
      for (let k = 0; k < m.mask.length; k++) {
        if (!m.mask[k]) continue;
        for (let c = 0; c < 3; c++) data[4 * k + c] = (1 - FILL_ALPHA) * data[4 * k + c] + FILL_ALPHA * colour[c];
      }
    }
    if (state.outline) {
      for (const k of m.edge) for (let c = 0; c < 3; c++) data[4 * k + c] = colour[c];
    }
  }
  ctx.putImageData(pixels, 0, 0);
  drawBoxesAndKeypoints(ctx, shown, view.scored);
  canvas.dataset.shown = String(shown.length);
  canvas.dataset.total = String(view.instances.length);
  return shown.length;
}

function redrawAll() {
  for (const view of state.views) draw(view);
  const predict = state.views.find((v) => v.canvas.id === "predict-canvas");
  if (predict && predict.image) {
    $("predict-status").textContent = `${visible(predict).length} of ${predict.instances.length} instances shown` +
      (predict.seconds !== undefined ? ` (model: ${(predict.seconds * 1000).toFixed(0)} ms)` : "");
  }
}

function setView(canvas, image, instances, scored, extra) {
  state.views = state.views.filter((v) => v.canvas !== canvas);
  const view = Object.assign({canvas, image, instances, scored}, extra || {});
  state.views.push(view);
  draw(view);
  return view;
}

// Hover: the smallest visible instance under the pointer names its class and score.
function hover(event) {
  const view = state.views.find((v) => v.canvas === event.target);
  const tip = $("tooltip");
  if (!view || !view.image) { tip.hidden = true; return; }
  const rect = view.canvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) * view.canvas.width / rect.width);
  const y = Math.floor((event.clientY - rect.top) * view.canvas.height / rect.height);
  const k = y * view.canvas.width + x;
  const under = visible(view).filter((d) => covers(d, x, y, k)).sort((a, b) => decoded(a).area - decoded(b).area);
  if (!under.length) { tip.hidden = true; return; }
  const d = under[0];
  tip.textContent = d.category_name + (d.score !== null && d.score !== undefined ? ` ${d.score.toFixed(2)}` : "");
  tip.style.left = `${event.clientX + 12}px`; tip.style.top = `${event.clientY + 12}px`;
  tip.hidden = false;
}

// ---- controls -------------------------------------------------------------------------------
function buildClassToggles(classes) {
  const box = $("classes");
  box.textContent = "";
  for (const c of classes) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox"; input.checked = true; input.dataset.label = String(c.label);
    input.addEventListener("change", () => {
      if (input.checked) state.hiddenLabels.delete(c.label); else state.hiddenLabels.add(c.label);
      redrawAll();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${PALETTE[c.label % PALETTE.length].join(",")})`;
    label.append(input, swatch, document.createTextNode(c.name));
    box.append(label);
  }
}

function wireControls() {
  $("score").addEventListener("input", () => {
    state.threshold = Number($("score").value);
    $("score-value").textContent = state.threshold.toFixed(2);
    redrawAll();
    scheduleReviewRefresh();
  });
  $("show-fill").addEventListener("change", () => { state.fill = $("show-fill").checked; redrawAll(); });
  $("show-outline").addEventListener("change", () => { state.outline = $("show-outline").checked; redrawAll(); });
  $("tab-predict").addEventListener("click", () => showTab("predict"));
  $("tab-review").addEventListener("click", () => showTab("review"));
  for (const id of ["predict-canvas", "truth-canvas", "pred-canvas"]) {
    $(id).addEventListener("mousemove", hover);
    $(id).addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  }
}

function showTab(name) {
  $("predict-panel").hidden = name !== "predict";
  $("review-panel").hidden = name !== "review";
  $("tab-predict").classList.toggle("active", name === "predict");
  $("tab-review").classList.toggle("active", name === "review");
  if (name === "review") refreshReview();
}

// ---- predict --------------------------------------------------------------------------------
function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this image"));
    image.src = src;
  });
}

async function predictFile(file) {
  const status = $("predict-status");
  status.textContent = `segmenting ${file.name} ...`;
  const form = new FormData();
  form.append("file", file, file.name);
  // score_threshold=0: every detection comes back once; the slider filters here.
  const response = await fetch("/v1/predict?score_threshold=0", {method: "POST", body: form});
  const body = await response.json();
  if (!response.ok) { status.textContent = `refused (${response.status}): ${body.detail}`; return; }
  let image;
  try { image = await loadImage(URL.createObjectURL(file)); } catch (error) { status.textContent = error.message; return; }
  setView($("predict-canvas"), image, body.instances, true, {seconds: body.seconds});
  redrawAll();
}

function wireDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", () => { if ($("file").files.length) predictFile($("file").files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) predictFile(e.dataTransfer.files[0]);
  });
}

// ---- dataset review -------------------------------------------------------------------------
function fileUrl(fileName) {
  return "/v1/review/files/" + fileName.split("/").map(encodeURIComponent).join("/");
}

async function pollReview() {
  const response = await fetch("/v1/review/status");
  if (!response.ok) return;
  const s = await response.json();
  $("review-progress").max = Math.max(s.total, 1);
  $("review-progress").value = s.done;
  $("review-text").textContent = s.finished ? `${s.done} images predicted` + (s.failed.length ? `, ${s.failed.length} failed` : "")
    : `predicting the dataset: ${s.done} / ${s.total}`;
  if (s.done !== state.reviewDone) { state.reviewDone = s.done; if (!$("review-panel").hidden) refreshReview(); }
  if (!s.finished) setTimeout(pollReview, 500);
}

function scheduleReviewRefresh() {
  if ($("review-panel").hidden) return;
  clearTimeout(state.reviewTimer);
  state.reviewTimer = setTimeout(() => { refreshReview(); if (state.detailId !== null) openDetail(state.detailId); }, 250);
}

async function refreshReview() {
  const query = new URLSearchParams({sort: state.reviewSort, score_threshold: String(state.threshold)});
  if (state.reviewClass) query.set("class_name", state.reviewClass);
  const response = await fetch(`/v1/review/images?${query}`);
  if (!response.ok) return;
  const rows = await response.json();
  const grid = $("grid");
  grid.textContent = "";
  for (const row of rows) {
    const card = document.createElement("div");
    card.className = "card"; card.dataset.imageId = String(row.image_id);
    const image = document.createElement("img");
    image.src = fileUrl(row.file_name); image.alt = row.file_name; image.loading = "lazy";
    const stats = document.createElement("div");
    stats.className = "stats";
    const iou = row.mean_iou === null ? "-" : row.mean_iou.toFixed(2);
    stats.innerHTML = `<b>#${row.image_id}</b> error <span class="${row.error > 0 ? "bad" : ""}">${row.error.toFixed(2)}</span><br>` +
      `missed ${row.missed}, false pos. ${row.false_positives}, IoU ${iou}`;
    card.append(image, stats);
    card.addEventListener("click", () => openDetail(row.image_id));
    grid.append(card);
  }
}

async function openDetail(imageId) {
  const response = await fetch(`/v1/review/images/${imageId}?score_threshold=${state.threshold}`);
  if (!response.ok) return;
  const d = await response.json();
  state.detailId = imageId;
  const image = await loadImage(fileUrl(d.file_name));
  $("detail").hidden = false; $("grid").hidden = true;
  const iou = d.mean_iou === null ? "-" : d.mean_iou.toFixed(2);
  $("detail-title").textContent = `image ${d.image_id} (${d.file_name}): ${d.truth.length} true instances, ` +
    `missed ${d.missed}, false positives ${d.false_positives}, mean mask IoU ${iou}`;
  setView($("truth-canvas"), image, d.truth, false);
  setView($("pred-canvas"), image, d.predictions, true);
}

function wireReview(classes) {
  const filter = $("class-filter");
  for (const c of classes) {
    const option = document.createElement("option");
    option.value = c.name; option.textContent = c.name;
    filter.append(option);
  }
  filter.addEventListener("change", () => { state.reviewClass = filter.value; refreshReview(); });
  $("sort").addEventListener("change", () => { state.reviewSort = $("sort").value; refreshReview(); });
  $("detail-close").addEventListener("click", () => {
    $("detail").hidden = true; $("grid").hidden = false; state.detailId = null;
    state.views = state.views.filter((v) => v.canvas.id === "predict-canvas");
  });
}

// ---- start ----------------------------------------------------------------------------------
async function start() {
  wireControls();
  wireDrop();
  const [model, health] = await Promise.all([fetch("/v1/model").then((r) => r.json()), fetch("/health").then((r) => r.json())]);
  state.classes = model.classes;
  if (model.keypoints) {
    state.skeleton = model.keypoints.skeleton;
    state.keypointThreshold = model.keypoints.threshold;
  }
  $("model-name").textContent = `${model.preset} (${model.num_classes} classes)`;
  buildClassToggles(model.classes);
  state.threshold = health.score_threshold;
  $("score").value = String(health.score_threshold);
  $("score-value").textContent = state.threshold.toFixed(2);
  if (health.review !== null) {
    $("tab-review").hidden = false;
    wireReview(model.classes);
    pollReview();
  }
  document.body.dataset.ready = "1";
}

start();
