// Webhooks: endpoints (GET/POST/DELETE /v1/webhooks/endpoints, POST .../rotate), the per-job signing secret
// (POST /v1/webhooks/signing-secret/rotate) and the delivery log (GET /v1/webhooks/deliveries, POST .../redeliver).
"use strict";
(function () {
  const { api, el, setStatus, when } = window.iq;

  function showSecret(secret) {
    document.getElementById("secret").textContent = secret;
    document.getElementById("secret-box").hidden = false;
  }

  async function act(question, fn) {
    if (question && !window.confirm(question)) return;
    try { await fn(); await load(); } catch (err) { setStatus(err.message, true); }
  }

  function button(text, cls, onClick) {
    const b = el("button", { type: "button", class: cls }, text);
    b.addEventListener("click", onClick);
    return b;
  }

  function endpointRow(ep) {
    const path = "/v1/webhooks/endpoints/" + encodeURIComponent(ep.id);
    const rotate = button("Rotate secret", "rotate", () => act("Rotate this endpoint's secret? The old one keeps " +
      "signing for the overlap period.", async () => showSecret((await api("POST", path + "/rotate")).secret)));
    const remove = button("Delete", "delete", () => act("Delete this endpoint? Its pending deliveries are canceled.",
      () => api("DELETE", path)));
    const state = ep.disabled_at ? "disabled: " + (ep.disabled_reason || "") : "active";
    return el("tr", {}, el("th", { scope: "row", class: "url" }, ep.url), el("td", {}, ep.events.join(", ")),
      el("td", {}, state), el("td", {}, rotate, " ", remove));
  }

  function deliveryRow(d) {
    const again = button("Redeliver", "redeliver", () => act(null, async () => {
      await api("POST", "/v1/webhooks/deliveries/" + encodeURIComponent(d.id) + "/redeliver");
      setStatus("Delivery queued again.");
    }));
    return el("tr", {}, el("td", {}, el("a", { href: "/jobs/" + d.job_id }, d.job_id.slice(0, 8))),
      el("td", {}, d.event), el("td", {}, d.url), el("td", {}, d.status), el("td", {}, d.attempts),
      el("td", {}, d.last_status_code ?? d.last_error ?? "–"), el("td", {}, again));
  }

  async function load() {
    const [eps, log] = await Promise.all([api("GET", "/v1/webhooks/endpoints"), api("GET", "/v1/webhooks/deliveries")]);
    document.querySelector("#endpoints tbody").replaceChildren(...eps.data.map(endpointRow));
    document.querySelector("#deliveries tbody").replaceChildren(...log.data.map(deliveryRow));
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("new-endpoint").addEventListener("submit", (e) => {
      e.preventDefault();
      const events = Array.from(document.querySelectorAll('input[name="events"]:checked')).map((c) => c.value);
      act(null, async () => {
        const ep = await api("POST", "/v1/webhooks/endpoints", { url: document.getElementById("ep-url").value, events });
        showSecret(ep.secret);
        setStatus("Endpoint added at " + when(ep.created_at) + ".");
      });
    });
    document.getElementById("rotate-job-secret").addEventListener("click", () => act("Rotate the per-job signing " +
      "secret? The old one keeps signing for the overlap period.",
      async () => showSecret((await api("POST", "/v1/webhooks/signing-secret/rotate")).secret)));
    load().catch((err) => setStatus(err.message, true));
  });
})();
