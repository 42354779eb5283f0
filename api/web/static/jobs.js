// Jobs: GET /v1/jobs (status filter on the server, kind filter here), refreshed every few seconds.
"use strict";
(function () {
  const { api, el, setStatus, when } = window.iq;
  const REFRESH_MS = 3000;
  let cursor = null;

  function row(job) {
    const c = job.request_counts || job.counts;
    return el("tr", { "data-status": job.status },
      el("td", {}, el("a", { href: "/jobs/" + job.id }, job.id.slice(0, 8))),
      el("td", {}, job.kind),
      el("td", {}, el("span", { class: "badge " + job.status }, job.status)),
      el("td", {}, c.completed + c.failed + "/" + c.total),
      el("td", {}, job.model_version || job.model),
      el("td", {}, when(job.created_at)));
  }

  async function load(append) {
    const status = document.getElementById("f-status").value;
    const kind = document.getElementById("f-kind").value;
    const q = new URLSearchParams({ limit: "50" });
    if (status) q.set("status", status);
    if (append && cursor) q.set("cursor", cursor);
    try {
      const page = await api("GET", "/v1/jobs?" + q.toString());
      const rows = page.data.filter((j) => !kind || j.kind === kind).map(row);
      const body = document.querySelector("#jobs tbody");
      if (append) body.append(...rows); else body.replaceChildren(...rows);
      cursor = page.next_cursor;
      document.getElementById("more").hidden = !cursor;
      setStatus(body.children.length + " job(s) shown · updated " + new Date().toLocaleTimeString());
    } catch (err) {
      setStatus(err.message, true);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const id of ["f-status", "f-kind"]) document.getElementById(id).addEventListener("change", () => load(false));
    document.getElementById("filters").addEventListener("submit", (e) => { e.preventDefault(); load(false); });
    document.getElementById("more").addEventListener("click", () => load(true));
    load(false);
    setInterval(() => { if (document.getElementById("live").checked && !document.hidden) load(false); }, REFRESH_MS);
  });
})();
