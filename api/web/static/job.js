// One job: GET /v1/jobs/{id} (long-polled until it finishes), its webhook deliveries, and cancel.
"use strict";
(function () {
  const { api, el, setStatus, when, TERMINAL } = window.iq;

  function facts(job) {
    const c = job.request_counts || job.counts;
    const pairs = [
      ["Status", job.status], ["Kind", job.kind], ["Model asked", job.model],
      ["Model version that ran", job.model_version || "–"],
      ["Items", c.total + " (" + c.completed + " done, " + c.failed + " failed" + (c.expired ? ", " + c.expired + " expired" : "") + ")"],
      ["Attempts", job.attempts],
      ["Created", when(job.created_at)], ["Started", when(job.started_at)], ["Finished", when(job.finished_at)],
    ];
    if (job.started_at && job.finished_at) {
      pairs.push(["Run time", ((new Date(job.finished_at) - new Date(job.started_at)) / 1000).toFixed(3) + " s"]);
    }
    if (job.eta_seconds !== null && job.eta_seconds !== undefined) pairs.push(["ETA", job.eta_seconds.toFixed(0) + " s"]);
    if (job.deadline_at) pairs.push(["Deadline", when(job.deadline_at)]);
    if (job.priority !== null && job.priority !== undefined) pairs.push(["Priority", ["0 (low)", "1 (normal)", "2 (high)"][job.priority] || String(job.priority)]);
    if (job.error) pairs.push(["Error", job.error.type + ": " + job.error.detail]);
    return pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]);
  }

  async function deliveries(jobId) {
    const page = await api("GET", "/v1/webhooks/deliveries?job_id=" + encodeURIComponent(jobId));
    if (!page.data.length) return null;
    const rows = page.data.map((d) => el("tr", {}, el("td", {}, d.event), el("td", {}, d.url),
      el("td", {}, d.status), el("td", {}, d.attempts), el("td", {}, d.last_status_code ?? d.last_error ?? "–")));
    return el("table", {}, el("caption", {}, "Webhook deliveries"),
      el("thead", {}, el("tr", {}, ...["Event", "URL", "Status", "Attempts", "Last answer"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows));
  }

  async function show(job) {
    document.getElementById("facts").replaceChildren(...facts(job));
    document.getElementById("cancel").hidden = TERMINAL.has(job.status);
    if (job.predictions) await window.iqResults.render(document.getElementById("results"), job);
    const hooks = await deliveries(job.id).catch(() => null);
    if (hooks) document.getElementById("results").after(hooks);
  }

  async function follow(jobId) {
    let job = await api("GET", "/v1/jobs/" + encodeURIComponent(jobId));
    await show(job);
    while (!TERMINAL.has(job.status)) {
      setStatus("Job is " + job.status + "; watching…");
      job = await api("GET", "/v1/jobs/" + encodeURIComponent(jobId) + "?wait=20");
      await show(job);
    }
    setStatus("Job " + job.status + ".");
  }

  document.addEventListener("DOMContentLoaded", () => {
    const jobId = document.getElementById("job-id").dataset.jobId;
    document.getElementById("cancel").addEventListener("click", async () => {
      if (!window.confirm("Cancel this job?")) return;
      try { await show(await api("POST", "/v1/jobs/" + encodeURIComponent(jobId) + "/cancel")); }
      catch (err) { setStatus(err.message, true); }
    });
    follow(jobId).catch((err) => setStatus(err.message, true));
  });
})();
