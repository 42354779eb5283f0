// Datasets & scoring: upload (XHR, for its progress events) to POST /v1/datasets, list GET /v1/datasets,
// score with POST /v1/jobs {kind: "score"}, follow GET /v1/jobs/{id}, draw the confusion matrix when labelled.
"use strict";
(function () {
  const { api, el, svg, setStatus, when, pct, sleep, TERMINAL } = window.iq;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  function upload(file) {
    const bar = document.getElementById("ds-progress");
    bar.hidden = false; bar.value = 0;
    const form = new FormData();
    form.append("file", file, file.name);
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/datasets");
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
      xhr.onload = () => {
        const body = xhr.responseText ? JSON.parse(xhr.responseText) : {};
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else reject(new iq.ApiError(body, xhr.status));
      };
      xhr.onerror = () => reject(new Error("the upload was interrupted"));
      xhr.send(form);
    });
  }

  function row(ds) {
    const button = el("button", { type: "button", class: "score", "data-dataset": ds.id }, "Score");
    button.addEventListener("click", () => score(ds));
    return el("tr", {}, el("th", { scope: "row", class: "name" }, ds.name), el("td", {}, ds.format),
      el("td", {}, ds.item_count), el("td", {}, ds.labelled ? "yes" : "no"), el("td", {}, when(ds.created_at)),
      el("td", {}, button));
  }

  async function list() {
    const page = await api("GET", "/v1/datasets");
    document.querySelector("#datasets tbody").replaceChildren(...page.data.map(row));
  }

  function facts(job) {
    const c = job.request_counts || job.counts;
    const secs = job.started_at ? (Date.now() - new Date(job.started_at)) / 1000 : 0;
    const pairs = [["Job", el("a", { href: "/jobs/" + job.id }, job.id)], ["Status", job.status],
      ["Items", `${c.completed + c.failed} of ${c.total} (${c.failed} failed)`],
      ["Rate", secs > 0 && !TERMINAL.has(job.status) ? ((c.completed + c.failed) / secs).toFixed(0) + " items/s" : "–"],
      ["ETA", job.eta_seconds !== null && job.eta_seconds !== undefined ? job.eta_seconds.toFixed(0) + " s" : "–"]];
    if (job.result && job.result.accuracy !== undefined) pairs.push(["Accuracy", pct(job.result.accuracy)]);
    if (job.files && job.status === "succeeded") {
      pairs.push(["Downloads", el("span", {}, ...Object.entries(job.files).flatMap(([k, href]) =>
        [el("a", { href: href, download: "", class: "file" }, k), " "]))]);
    }
    return pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]);
  }

  function confusion(cm) {
    const n = cm.labels.length, cell = 28, off = 30;
    const peak = Math.max(1, ...cm.matrix.flat());
    const box = svg("svg", { viewBox: `0 0 ${off + n * cell} ${off + n * cell}`, class: "chart confusion", role: "img",
      "aria-label": "Confusion matrix: rows are true labels, columns predicted labels" });
    const add = (tag, attrs, text) => box.appendChild(svg(tag, attrs, text));
    cm.labels.forEach((l, i) => {
      add("text", { x: off + i * cell + cell / 2, y: off - 8, "text-anchor": "middle" }, l);
      add("text", { x: off - 8, y: off + i * cell + cell / 2 + 4, "text-anchor": "end" }, l);
    });
    cm.matrix.forEach((r, i) => r.forEach((v, j) => {
      const shade = Math.round(255 - 200 * (v / peak));
      const rect = add("rect", { x: off + j * cell, y: off + i * cell, width: cell - 1, height: cell - 1,
        fill: i === j ? `rgb(${shade},255,${shade})` : `rgb(255,${shade},${shade})` });
      rect.append(svg("title", {}, `true ${cm.labels[i]}, predicted ${cm.labels[j]}: ${v}`));
    }));
    return box;
  }

  async function score(ds) {
    try {
      let job = await api("POST", "/v1/jobs", { kind: "score", dataset: ds.id });
      document.getElementById("scoring").hidden = false;
      for (;;) {
        const c = job.request_counts || job.counts;
        document.getElementById("score-progress").value = c.total ? (c.completed + c.failed) / c.total : 0;
        document.getElementById("score-facts").replaceChildren(...facts(job));
        if (TERMINAL.has(job.status)) break;
        setStatus(`Scoring ${ds.name}: ${job.status}…`);
        await sleep(1000);
        job = await api("GET", "/v1/jobs/" + job.id);
      }
      const cm = job.result && job.result.confusion_matrix;
      document.getElementById("confusion").replaceChildren(...(cm ? [el("h3", {}, "Confusion matrix"), confusion(cm)] : []));
      setStatus(`Scoring ${ds.name} ${job.status}.`);
    } catch (err) {
      setStatus(err.message, true);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("upload").addEventListener("submit", async (e) => {
      e.preventDefault();
      const file = document.getElementById("ds-file").files[0];
      if (!file) return;
      try {
        const ds = await upload(file);
        setStatus(`Uploaded ${ds.name}: ${ds.item_count} items.`);
        await list();
      } catch (err) {
        setStatus(err.message, true);
      }
    });
    list().catch((err) => setStatus(err.message, true));
  });
})();
