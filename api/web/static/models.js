// Models: GET /v1/models and each model's /report as a table and a chart (accuracy vs size, dot area = latency);
// promote/rollback = PUT /v1/models/{name}/aliases/{alias} after a confirmation.
"use strict";
(function () {
  const { api, el, svg, setStatus, pct } = window.iq;
  const W = 480, H = 240, PAD = 40;

  const num = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
  const kb = (b) => (b / 1024).toFixed(0) + " KB";
  const versionOf = (ref) => Number(ref.split(":").pop());

  function chart(rows) {
    const pts = rows.filter((r) => r.test_accuracy !== null && r.size_bytes);
    if (!pts.length) return el("p", { class: "muted" }, "No version has a measured test accuracy yet: nothing to chart.");
    const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
      "aria-label": "Accuracy against file size; bigger dots are slower (latency at batch 1)" });
    const logs = pts.map((r) => Math.log10(r.size_bytes));
    const accs = pts.map((r) => r.test_accuracy);
    const [x0, x1] = [Math.min(...logs) - 0.2, Math.max(...logs) + 0.2];
    const [y0, y1] = [Math.min(...accs) - 0.01, Math.min(1, Math.max(...accs) + 0.01)];
    const sx = (v) => PAD + (W - 2 * PAD) * (v - x0) / (x1 - x0 || 1);
    const sy = (v) => H - PAD - (H - 2 * PAD) * (v - y0) / (y1 - y0 || 1);
    box.append(svg("line", { x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, class: "axis" }));
    box.append(svg("line", { x1: PAD, y1: PAD, x2: PAD, y2: H - PAD, class: "axis" }));
    box.append(svg("text", { x: W / 2, y: H - 8, "text-anchor": "middle" }, "file size (log scale)"));
    box.append(svg("text", { x: 8, y: PAD - 12 }, "test accuracy"));
    pts.forEach((r, i) => {
      const radius = 4 + Math.min(12, Math.sqrt(r.latency_ms_batch1 || 1) * 2);
      const dot = svg("circle", { cx: sx(logs[i]), cy: sy(accs[i]), r: radius, class: "dot" });
      dot.append(svg("title", {}, `${r.ref}: ${pct(r.test_accuracy)}, ${kb(r.size_bytes)}, ${num(r.latency_ms_batch1, 2)} ms`));
      box.append(dot, svg("text", { x: sx(logs[i]) + radius + 2, y: sy(accs[i]) + 4 }, r.ref.split(":").pop()));
    });
    return box;
  }

  async function promote(name, version, alias) {
    if (!window.confirm(`Point ${name}@${alias} at version ${version}? New jobs use it at once.`)) return;
    try {
      await api("PUT", `/v1/models/${encodeURIComponent(name)}/aliases/${encodeURIComponent(alias)}`, { version: version });
      setStatus(`${name}@${alias} now points at version ${version}.`);
      await load();
    } catch (err) {
      setStatus(err.message, true);
    }
  }

  function table(report) {
    const head = ["Version", "Format", "Aliases", "Size", "Test acc.", "Real-world acc.", "Latency b1 (ms)",
      "Images/s b64", "Action"];
    const rows = report.rows.map((r) => {
      const v = versionOf(r.ref);
      const isProd = r.aliases.includes("production");
      const button = el("button", { type: "button", class: "promote", "data-version": v, disabled: isProd },
        isProd ? "production" : "Make production");
      button.addEventListener("click", () => promote(report.name, v, "production"));
      return el("tr", {}, el("th", { scope: "row" }, r.ref), el("td", {}, r.format + (r.variant ? " " + r.variant : "")),
        el("td", {}, r.aliases.join(", ") || "–"), el("td", {}, kb(r.size_bytes)), el("td", {}, pct(r.test_accuracy)),
        el("td", {}, pct(r.realworld_accuracy)), el("td", {}, num(r.latency_ms_batch1, 2)),
        el("td", {}, num(r.throughput_batch64, 0)), el("td", {}, button));
    });
    return el("div", { class: "scroll" }, el("table", {}, el("caption", {}, report.name + ": versions"),
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, ...rows)));
  }

  async function load() {
    const models = await api("GET", "/v1/models");
    const sections = [];
    for (const m of models.data) {
      const report = await api("GET", `/v1/models/${encodeURIComponent(m.name)}/report`);
      sections.push(el("section", { class: "card", "data-model": m.name }, el("h2", {}, m.name), table(report), chart(report.rows)));
    }
    document.getElementById("models").replaceChildren(...sections);
    if (!sections.length) setStatus("No models yet: `inferq train` makes one.");
    else if (document.getElementById("status").textContent === "Loading…") setStatus(sections.length + " model(s).");
  }

  window.iq.reloadModels = load;  // training.js: a finished training adds a version
  document.addEventListener("DOMContentLoaded", () => load().catch((err) => setStatus(err.message, true)));
})();
