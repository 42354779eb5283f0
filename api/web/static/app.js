// inferq web app: shared helpers. The page is a client of the REST API (/v1/...): the browser sends its
// session cookie, and every unsafe request echoes the session's CSRF token in X-CSRF-Token.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  class ApiError extends Error {
    constructor(problem, status) {
      super(problem.detail || problem.title || "HTTP " + status);
      this.problem = problem;
      this.status = status;
    }
  }

  async function api(method, path, body, headers) {
    const opts = { method: method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
    if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf;
    if (body instanceof FormData) opts.body = body;
    else if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(path, opts);
    if (resp.status === 401) {
      window.location.assign("/signin?next=" + encodeURIComponent(location.pathname + location.search));
      throw new ApiError({ detail: "signed out" }, 401);
    }
    const text = await resp.text();
    const data = text ? JSON.parse(text) : null;
    if (!resp.ok) throw new ApiError(data || {}, resp.status);
    return data;
  }

  // el("td", {class: "x"}, "text", child): children are text nodes or elements, never HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function setStatus(text, isError) {
    const s = document.getElementById("status");
    if (!s) return;
    s.textContent = text;
    s.classList.toggle("error", Boolean(isError));
  }

  // svg("circle", {cx: 1}, "title text"): an SVG element (charts on the datasets and models pages).
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);  // a job in one of these never changes again
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

  window.iq = { api: api, el: el, svg: svg, setStatus: setStatus, sleep: sleep, pct: pct, when: when, TERMINAL: TERMINAL,
    ApiError: ApiError };
})();
