// Classify: draw on the pad or drop/paste/pick files; the job is sent to POST /v1/jobs and long-polled.
"use strict";
(function () {
  const { api, el, setStatus, TERMINAL } = window.iq;
  const SCALE = 6; // 28 px -> 168 px

  function loadPng(b64) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = reject;
      img.src = "data:image/png;base64," + b64;
    });
  }

  function pixels(img) {
    const c = document.createElement("canvas");
    c.width = c.height = 28;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    return ctx.getImageData(0, 0, 28, 28).data;
  }

  // The picture the model saw (grey), with the saliency map over it in red-yellow (alpha = weight).
  async function heatmap(pred) {
    const canvas = el("canvas", { width: 28 * SCALE, height: 28 * SCALE, class: "heat", role: "img",
      "aria-label": "The 28×28 picture the model saw with its explanation heat-map" });
    const [seen, sal] = await Promise.all([loadPng(pred.input_image), loadPng(pred.explanation)]);
    const a = pixels(seen), b = pixels(sal);
    const small = document.createElement("canvas");
    small.width = small.height = 28;
    const sctx = small.getContext("2d");
    const out = sctx.createImageData(28, 28);
    for (let i = 0; i < 28 * 28; i++) {
      const g = a[4 * i], w = Math.sqrt(b[4 * i] / 255); // sqrt: faint weights stay visible
      out.data[4 * i] = Math.round(g * (1 - w) + 255 * w);
      out.data[4 * i + 1] = Math.round(g * (1 - w) + 200 * w * w);
      out.data[4 * i + 2] = Math.round(g * (1 - w));
      out.data[4 * i + 3] = 255;
    }
    sctx.putImageData(out, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(small, 0, 0, 28 * SCALE, 28 * SCALE);
    return canvas;
  }

  function seenOnly(pred) {
    return el("img", { src: "data:image/png;base64," + pred.input_image, width: 28 * SCALE, height: 28 * SCALE,
      class: "heat", alt: "The 28×28 picture the model saw" });
  }

  function bars(topk) {
    const list = el("ol", { class: "bars", "aria-label": "Most likely labels" });
    for (const t of topk || []) {
      const p = el("progress", { max: 1, value: t.confidence, "aria-label": "label " + t.label });
      list.append(el("li", {}, el("span", { class: "lab" }, t.label), p, el("span", {}, iq.pct(t.confidence))));
    }
    return list;
  }

  async function card(pred) {
    const head = el("h3", { class: "fname" }, pred.filename || "image " + pred.index);
    const box = el("article", { class: "pred", "data-index": pred.index }, head);
    if (pred.error) {
      box.append(el("p", { class: "error" }, pred.error.type + ": " + pred.error.detail));
      return box;
    }
    const label = pred.label === null ? "nothing to read" : pred.label;
    box.append(el("p", { class: "verdict" }, el("span", { class: "label" }, label),
      pred.confidence === null ? "" : " · " + iq.pct(pred.confidence)));
    box.append(bars(pred.top_k));
    if (pred.warnings && pred.warnings.length) {
      box.append(el("ul", { class: "warnings", "aria-label": "Warnings" }, ...pred.warnings.map((w) => el("li", {}, w))));
    }
    if (pred.input_image && pred.explanation) box.append(await heatmap(pred));
    else if (pred.input_image) box.append(seenOnly(pred));
    if (pred.model_version) box.append(el("p", { class: "muted" }, "model " + pred.model_version));
    return box;
  }

  async function render(container, job) {
    const cards = await Promise.all((job.predictions || []).map(card));
    container.replaceChildren(...cards);
  }

  async function waitFor(jobId) {
    for (;;) {
      const job = await api("GET", "/v1/jobs/" + encodeURIComponent(jobId) + "?wait=20");
      if (TERMINAL.has(job.status)) return job;
      setStatus("Job " + job.id + " is " + job.status + "…");
    }
  }

  let sending = 0;
  async function submit(files) {
    const form = new FormData();
    for (const f of files) form.append("images", f, f.name);
    const model = document.getElementById("model").value.trim();
    if (model) form.append("model", model);
    form.append("top_k", document.getElementById("topk").value || "3");
    form.append("explain", document.getElementById("explain").checked ? "true" : "false");
    const mine = ++sending;
    setStatus("Sending " + files.length + " image(s) and waiting for the model…");
    try {
      // Prefer: wait — the answer holds until the job is done (201), or comes as the usual 202 after 20 s
      const job = await api("POST", "/v1/jobs", form, { Prefer: "wait=20" });
      if (!TERMINAL.has(job.status)) setStatus("Job " + job.id + " is " + job.status + "…");
      const done = TERMINAL.has(job.status) ? job : await waitFor(job.id);
      if (mine !== sending) return; // a newer request took over
      await render(document.getElementById("results"), done);
      const link = el("a", { href: "/jobs/" + done.id }, "job " + done.id);
      const s = document.getElementById("status");
      s.replaceChildren("Done: ", link, " " + done.status + ".");
      s.classList.remove("error");
    } catch (err) {
      setStatus(err.message, true);
    }
  }

  function setupPad() {
    const pad = document.getElementById("pad");
    if (!pad) return;
    const ctx = pad.getContext("2d");
    const clear = () => { ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, pad.width, pad.height); pad.dataset.ink = "0"; };
    clear();
    ctx.lineWidth = 20; ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.strokeStyle = "#000";
    let drawing = false;
    const at = (e) => {
      const r = pad.getBoundingClientRect();
      return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
    };
    pad.addEventListener("pointerdown", (e) => {
      drawing = true; pad.setPointerCapture(e.pointerId);
      const [x, y] = at(e); ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(x, y); ctx.stroke();
      pad.dataset.ink = "1";
    });
    pad.addEventListener("pointermove", (e) => {
      if (!drawing) return;
      const [x, y] = at(e); ctx.lineTo(x, y); ctx.stroke();
    });
    const end = () => {
      if (!drawing) return;
      drawing = false;
      if (document.getElementById("auto").checked) sendDrawing();
    };
    pad.addEventListener("pointerup", end);
    pad.addEventListener("pointercancel", end);
    const sendDrawing = () => {
      if (pad.dataset.ink !== "1") { setStatus("Draw something first.", true); return; }
      pad.toBlob((blob) => submit([new File([blob], "drawing.png", { type: "image/png" })]), "image/png");
    };
    document.getElementById("clear").addEventListener("click", clear);
    document.getElementById("send-drawing").addEventListener("click", sendDrawing);
  }

  function setupFiles() {
    const drop = document.getElementById("drop");
    if (!drop) return;
    const files = document.getElementById("files");
    files.addEventListener("change", () => { if (files.files.length) submit(Array.from(files.files)); });
    drop.addEventListener("click", () => files.click());
    drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); files.click(); } });
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault(); drop.classList.remove("over");
      const list = Array.from(e.dataTransfer.files || []);
      if (list.length) submit(list);
    });
    document.addEventListener("paste", (e) => {
      const list = Array.from(e.clipboardData.files || []);
      if (list.length) { e.preventDefault(); submit(list); }
    });
  }

  window.iqResults = { render: render };
  document.addEventListener("DOMContentLoaded", () => { setupPad(); setupFiles(); });
})();
