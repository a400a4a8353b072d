// Live parts of the console: poll a server-rendered fragment while something runs; draw the tokens/s chart.
"use strict";
(function () {
  const LIVE = new Set(["loading", "queued", "running"]);
  const POLL_MS = 1000;
  const IDLE_POLL_MS = 2000;

  async function fetchFragment(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (response.redirected || !response.ok) return null; // signed out or gone: stop polling
    return response.text();
  }

  // The jobs list: replace the rows while any job is live.
  const rows = document.getElementById("job-rows");
  if (rows) {
    // Every second while a job is live; every few seconds otherwise, so new jobs show up.
    const anyLive = () => [...rows.querySelectorAll("tr[data-status]")].some((r) => LIVE.has(r.dataset.status));
    const next = () => setTimeout(tick, anyLive() ? POLL_MS : IDLE_POLL_MS);
    const tick = async () => {
      const html = await fetchFragment(rows.dataset.src);
      if (html === null) return;
      rows.innerHTML = html;
      next();
    };
    next();
  }

  // A job's page: refresh the summary while the job is live, sample tokens/s into the chart, reload once it ends.
  const summary = document.getElementById("job-summary");
  const chart = document.getElementById("rate-chart");
  const points = chart ? JSON.parse(chart.dataset.points || "[]") : [];
  if (chart) draw(chart, points);
  if (summary && summary.dataset.live === "1") {
    const tick = async () => {
      const html = await fetchFragment(summary.dataset.src);
      if (html === null) return;
      summary.innerHTML = html;
      const state = summary.querySelector("[data-status]");
      if (chart && state) {
        points.push([Date.now() / 1000, parseFloat(state.dataset.tps) || 0]);
        draw(chart, points);
      }
      if (state && !LIVE.has(state.dataset.status)) {
        window.location.reload(); // records, exports and final counts appear
        return;
      }
      setTimeout(tick, POLL_MS);
    };
    setTimeout(tick, POLL_MS);
  }

  function draw(svg, pts) {
    const NS = "http://www.w3.org/2000/svg";
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 600, H = 160, L = 48, B = 18;
    const add = (name, attrs, text) => {
      const el = document.createElementNS(NS, name);
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
      if (text !== undefined) el.textContent = text;
      svg.appendChild(el);
      return el;
    };
    add("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" });
    add("line", { x1: L, y1: 4, x2: L, y2: H - B, class: "axis" });
    if (pts.length === 0) {
      add("text", { x: L + 10, y: H / 2 }, "no progress recorded yet");
      return;
    }
    const t0 = pts[0][0], t1 = Math.max(pts[pts.length - 1][0], t0 + 10);
    const top = Math.max(1, ...pts.map((p) => p[1]));
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - 4);
    const y = (v) => H - B - (v / top) * (H - B - 8);
    add("polyline", { class: "line", points: pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ") });
    pts.forEach((p) => add("circle", { cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: 3, class: "dot" }));
    add("text", { x: 2, y: 14 }, `${Math.round(top)} tok/s`);
    add("text", { x: 2, y: H - B }, "0");
    add("text", { x: L, y: H - 2 }, new Date(t0 * 1000).toLocaleTimeString());
    add("text", { x: W - 70, y: H - 2 }, new Date(t1 * 1000).toLocaleTimeString());
  }
})();
