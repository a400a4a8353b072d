// The completion viewer: shade each token by the teacher's confidence, show its top-k on hover or focus,
// move between tokens with the arrow keys, and re-softmax the top-k at a temperature T.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("token-data").textContent);
  const spans = [...document.querySelectorAll("#tokens .tok")];
  const tip = document.getElementById("tip");
  const tempInput = document.getElementById("temperature");
  let current = 0;

  const mode = (name) => document.querySelector(`input[name="${name}"]:checked`).value;
  const temperature = () => {
    const t = parseFloat(tempInput.value);
    return mode("dist") === "temp" && t > 0 ? t : null;
  };

  // The candidates' probabilities: exp(logprob) as stored, or softmax(logprob / T) over the top-k.
  function distribution(token) {
    const lps = token.c.map((c) => (c[2] === null ? -Infinity : c[2]));
    const T = temperature();
    if (T === null) return lps.map(Math.exp);
    const scaled = lps.map((lp) => lp / T);
    const top = Math.max(...scaled);
    const e = scaled.map((v) => Math.exp(v - top));
    const sum = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / sum);
  }

  function sampledProb(token, probs) {
    const at = token.c.findIndex((c) => c[0] === token.id);
    if (at >= 0) return probs[at];
    if (temperature() === null && token.lp !== null) return Math.exp(token.lp);
    return 0; // outside the top-k: at T its share of the top-k distribution is nil
  }

  // 0 (unsure) .. 1 (sure), by the sampled token's probability or by 1 - normalized entropy of top-k + tail.
  function confidence(token) {
    const probs = distribution(token);
    if (mode("shade") === "prob") return sampledProb(token, probs);
    const tail = Math.max(0, 1 - probs.reduce((a, b) => a + b, 0));
    const all = probs.concat([tail]).filter((p) => p > 0);
    const h = -all.reduce((a, p) => a + p * Math.log(p), 0);
    return 1 - h / Math.log(token.c.length + 1 || 2);
  }

  // Light amber (sure) to deep amber (unsure): dark text keeps >= 4.5:1 contrast across the whole scale.
  const shade = (c) => `hsl(35, 95%, ${(58 + 40 * Math.max(0, Math.min(1, c))).toFixed(1)}%)`;

  function paint() {
    spans.forEach((span, i) => {
      const c = confidence(data[i]);
      span.style.backgroundColor = shade(c);
      span.dataset.confidence = c.toFixed(4);
      span.classList.toggle("outside", !data[i].in);
      span.setAttribute("aria-label", `${label(data[i].t, data[i].id)}, confidence ${c.toFixed(2)}`);
    });
    const scale = document.getElementById("scale");
    scale.replaceChildren(...[0, 0.2, 0.4, 0.6, 0.8, 1].map((c) => {
      const s = document.createElement("span");
      s.style.backgroundColor = shade(c);
      return s;
    }));
    if (!tip.hidden) show(current);
  }

  // JSON escapes make newlines and tabs visible; spaces show as ␣.
  const label = (text, id) => (text === null ? `⟨${id}⟩` : JSON.stringify(text).slice(1, -1).replace(/ /g, "␣"));

  function show(i) {
    current = i;
    const token = data[i];
    const probs = distribution(token);
    const T = temperature();
    const head = document.createElement("div");
    const sp = sampledProb(token, probs);
    head.textContent = `token ${i}: "${label(token.t, token.id)}" (id ${token.id}), p = ${sp.toFixed(4)}` +
      (T === null ? " (raw)" : ` at T = ${T}`) + (token.in ? "" : " — sampled outside the top-k");
    const list = document.createElement("ol");
    list.setAttribute("aria-label", `top-${token.c.length} candidates`);
    token.c.forEach((c, j) => {
      const li = document.createElement("li");
      li.className = "cand" + (c[0] === token.id ? " sampled" : "");
      li.dataset.id = String(c[0]);
      li.dataset.p = String(probs[j]);
      const txt = document.createElement("span");
      txt.className = "txt";
      txt.textContent = (c[0] === token.id ? "✓ " : "") + label(c[1], c[0]);
      const barBox = document.createElement("span");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.display = "block";
      bar.style.width = `${(100 * probs[j]).toFixed(1)}%`;
      barBox.appendChild(bar);
      const p = document.createElement("span");
      p.className = "p";
      p.textContent = probs[j].toFixed(3);
      li.append(txt, barBox, p);
      list.appendChild(li);
    });
    tip.replaceChildren(head, list);
    tip.hidden = false;
    const r = spans[i].getBoundingClientRect();
    tip.style.left = `${Math.max(4, window.scrollX + r.left)}px`;
    tip.style.top = `${window.scrollY + r.bottom + 4}px`;
    spans.forEach((s, j) => s.classList.toggle("active", j === i));
  }

  function focusToken(i) {
    if (i < 0 || i >= spans.length) return;
    spans[current].tabIndex = -1;
    spans[i].tabIndex = 0;
    spans[i].focus();
  }

  spans.forEach((span, i) => {
    span.addEventListener("mouseenter", () => show(i));
    span.addEventListener("focus", () => show(i));
  });
  document.getElementById("tokens").addEventListener("keydown", (e) => {
    const moves = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
    if (e.key in moves) focusToken(current + moves[e.key]);
    else if (e.key === "Home") focusToken(0);
    else if (e.key === "End") focusToken(spans.length - 1);
    else if (e.key === "Escape") tip.hidden = true;
    else return;
    e.preventDefault();
  });
  document.querySelectorAll('input[name="shade"], input[name="dist"]').forEach((el) => el.addEventListener("change", paint));
  tempInput.addEventListener("input", () => { if (mode("dist") === "temp") paint(); });
  paint();
})();
