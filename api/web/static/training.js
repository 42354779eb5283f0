// Models page, training: the form POSTs /v1/models/{name}/trainings; the job is followed with GET /v1/jobs/{id}
// (every second), whose result.history grows by one row per epoch: loss and accuracy curves are drawn from it.
// A training already queued or running when the page opens is followed the same way.
"use strict";
(function () {
  const { api, el, svg, setStatus, pct, sleep, TERMINAL } = window.iq;
  const W = 300, H = 180, PAD = 34;
  const SERIES = [["loss", "val_loss"], ["accuracy", "val_accuracy"]];

  // One panel: `keys` (e.g. loss, val_loss) against the epoch, for `planned` epochs on the x axis.
  function panel(history, keys, planned) {
    const values = history.flatMap((row) => keys.map((k) => row[k]).filter((v) => typeof v === "number"));
    const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart curve", role: "img", "data-metric": keys[0],
      "aria-label": `${keys.join(" and ")} per epoch: ` + history.map((r) => `epoch ${r.epoch} ${keys[0]} ` +
        (typeof r[keys[0]] === "number" ? r[keys[0]].toFixed(3) : "–")).join(", ") });
    const [lo, hi] = values.length ? [Math.min(...values), Math.max(...values)] : [0, 1];
    const span = hi - lo || 1;
    const sx = (epoch) => PAD + (W - 2 * PAD) * (planned > 1 ? (epoch - 1) / (planned - 1) : 0.5);
    const sy = (v) => H - PAD - (H - 2 * PAD) * (v - lo) / span;
    box.append(svg("line", { x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, class: "axis" }),
      svg("line", { x1: PAD, y1: PAD, x2: PAD, y2: H - PAD, class: "axis" }),
      svg("text", { x: W / 2, y: H - 6, "text-anchor": "middle" }, `epoch (of ${planned})`),
      svg("text", { x: 4, y: PAD - 14 }, keys[0]),
      svg("text", { x: PAD - 4, y: PAD + 4, "text-anchor": "end" }, hi.toFixed(2)),
      svg("text", { x: PAD - 4, y: H - PAD, "text-anchor": "end" }, lo.toFixed(2)));
    keys.forEach((key, i) => {
      const pts = history.filter((r) => typeof r[key] === "number");
      if (!pts.length) return;
      const cls = "series s" + i;
      box.append(svg("polyline", { class: cls, points: pts.map((r) => `${sx(r.epoch)},${sy(r[key])}`).join(" ") }));
      pts.forEach((r) => {
        const dot = svg("circle", { class: cls, cx: sx(r.epoch), cy: sy(r[key]), r: 3 });
        dot.append(svg("title", {}, `epoch ${r.epoch}: ${key} ${r[key].toFixed(4)}`));
        box.append(dot);
      });
      box.append(svg("text", { x: W - PAD, y: PAD - 14 + 12 * i, "text-anchor": "end", class: cls }, key));
    });
    return box;
  }

  function facts(job) {
    const result = job.result || {};
    const history = result.history || [];
    const last = history[history.length - 1] || {};
    const pairs = [["Job", el("a", { href: "/jobs/" + job.id }, job.id)], ["Status", job.status],
      ["Epoch", `${history.length} of ${result.epochs_planned || "?"}`],
      ["Loss", typeof last.loss === "number" ? last.loss.toFixed(4) : "–"],
      ["Validation accuracy", pct(last.val_accuracy)]];
    if (result.test_accuracy !== undefined) pairs.push(["Test accuracy", pct(result.test_accuracy)]);
    if (result.model_version) pairs.push(["New version", result.model_version]);
    if (result.stop_reason) pairs.push(["Stopped", result.stop_reason]);
    if (job.error) pairs.push(["Error", job.error.detail || job.error.title || JSON.stringify(job.error)]);
    return pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]);
  }

  function show(job) {
    const result = job.result || {};
    const history = result.history || [];
    const planned = result.epochs_planned || Math.max(1, history.length);
    document.getElementById("training").hidden = false;
    document.getElementById("train-progress").value = Math.min(1, history.length / planned);
    document.getElementById("train-facts").replaceChildren(...facts(job));
    document.getElementById("curves").replaceChildren(
      ...(history.length ? SERIES.map((keys) => panel(history, keys, planned)) : [el("p", { class: "muted" },
        "The curves appear after the first epoch.")]));
  }

  async function follow(job) {
    const button = document.getElementById("train-start");
    button.disabled = true;
    try {
      for (;;) {
        show(job);
        if (TERMINAL.has(job.status)) break;
        setStatus(`Training ${job.model}: ${job.status}…`);
        await sleep(1000);
        job = await api("GET", "/v1/jobs/" + encodeURIComponent(job.id));
      }
      setStatus(job.status === "succeeded" ? `Trained ${job.result.model_version}: promote it above.` :
        `Training ${job.status}.`, job.status === "failed");
      if (job.status === "succeeded" && window.iq.reloadModels) await window.iq.reloadModels();
    } finally {
      button.disabled = false;
    }
  }

  function body(form) {
    const data = new FormData(form);
    const out = { dataset: data.get("dataset"), epochs: Number(data.get("epochs")),
      batch_size: Number(data.get("batch_size")), learning_rate: Number(data.get("learning_rate")),
      augment: data.get("augment") };
    if (data.get("limit")) out.limit = Number(data.get("limit"));
    return out;
  }

  async function datasets() {
    const page = await api("GET", "/v1/datasets");
    const select = document.getElementById("tr-dataset");
    for (const ds of page.data.filter((d) => d.labelled)) {
      select.append(el("option", { value: ds.id }, `${ds.name} (${ds.item_count} items)`));
    }
  }

  async function resume() {
    for (const status of ["running", "queued"]) {
      const page = await api("GET", "/v1/jobs?status=" + status);
      const job = page.data.find((j) => j.kind === "train");
      if (job) return follow(await api("GET", "/v1/jobs/" + encodeURIComponent(job.id)));
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("train");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const name = form.elements.model.value.trim();
      try {
        const job = await api("POST", `/v1/models/${encodeURIComponent(name)}/trainings`, body(form));
        await follow(job);
      } catch (err) {
        setStatus(err.message, true);
      }
    });
    datasets().then(resume).catch((err) => setStatus(err.message, true));
  });
})();
