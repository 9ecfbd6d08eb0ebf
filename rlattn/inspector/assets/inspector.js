// The inspector page's script; rlattn/inspector/page.py inlines it into the page. It reads the
// JSON data block (script#rlattn-data) and builds one panel per (trace, strategy). Tokens are
// created in batches of data.batch per task, yielding to the browser in between (so an 8K-token
// trace never blocks the page); recolouring on a signal change is batched the same way. When every
// panel is built, it sets body[data-rendered="done"] (the browser test waits for it).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("rlattn-data").textContent);
  const root = document.getElementById("panels");
  const tip = document.getElementById("tip");
  const sel = document.getElementById("signal");
  const COLOURS = { gamma: [22, 163, 74], waad: [37, 99, 235], delta: [147, 51, 234], fai: [234, 88, 12] };
  const NAMES = { gamma: "γ", waad: "WAAD", delta: "Δ WAAD", fai: "FAI" };
  // yield to the browser between batches (a macrotask, so input and paint run in between; unlike
  // requestAnimationFrame it also runs in background tabs and under headless virtual time)
  const nextFrame = (f) => setTimeout(f, 0);
  let signal = data.signal;
  const panels = [];

  function q99(values) {
    const v = values.filter((x) => x !== null && isFinite(x)).sort((a, b) => a - b);
    if (!v.length) return [0, 1];
    return [v[0], v[Math.min(v.length - 1, Math.floor(0.99 * (v.length - 1)))]];
  }
  function scale(p, sig) {
    const tr = data.traces[p.trace];
    if (sig === "gamma") {
      const g = tr.gammas[p.strategy];
      const r = q99(g);
      return { values: g, lo: Math.min(1, r[0]), hi: Math.max(r[1], 1.75) };
    }
    const r = q99(tr[sig]);
    return { values: tr[sig], lo: Math.min(0, r[0]), hi: r[1] > r[0] ? r[1] : r[0] + 1 };
  }
  function colour(v, s, sig) {
    if (v === null || !isFinite(v)) return "transparent";
    const base = sig === "gamma" ? 1 : s.lo;
    let a = (v - base) / (s.hi - base || 1);
    let c = COLOURS[sig];
    if (sig === "gamma" && v < 1) { c = [220, 38, 38]; a = (1 - v) / (1 - s.lo || 1); }
    a = Math.max(0, Math.min(1, a)) * 0.8;
    return a < 0.02 ? "transparent" : "rgba(" + c[0] + "," + c[1] + "," + c[2] + "," + a.toFixed(3) + ")";
  }
  function fmt(v) { return v === null || v === undefined ? "undefined" : (Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4)); }
  // a run of newlines shows one ↵ per newline and breaks the line once
  function shown(t) { return t === "" ? "∅" : t.replace(/\n+/g, (m) => "↵".repeat(m.length) + "\n"); }

  function legend() {
    const el = document.getElementById("legend");
    const s = panels.length ? scale(panels[0].p, signal) : { lo: 0, hi: 1 };
    const lo = signal === "gamma" ? 1 : s.lo;
    const c = COLOURS[signal];
    el.innerHTML = "";
    const a = document.createElement("span"); a.textContent = NAMES[signal] + " " + fmt(lo);
    const bar = document.createElement("span"); bar.className = "bar";
    bar.style.background = "linear-gradient(90deg, rgba(" + c + ",0), rgba(" + c + ",0.8))";
    const b = document.createElement("span"); b.textContent = fmt(s.hi) + (signal === "fai" ? " (blank: horizon empty)" : "");
    el.append(a, bar, b);
  }

  function makePanel(p, idx) {
    const tr = data.traces[p.trace];
    const el = document.createElement("section"); el.className = "panel";
    const h = document.createElement("h2");
    const t = document.createElement("span"); t.textContent = tr.label + " · " + p.strategy;
    const sub = document.createElement("span"); sub.className = "sub";
    const g = tr.gammas[p.strategy], n = g.length;
    const amp = g.filter((x) => x > 1).length;
    const mean = g.reduce((u, x) => u + x, 0) / Math.max(1, n);
    sub.textContent = n + " tokens · preplan " + tr.flags.preplan.length + " · anchor " + tr.flags.anchor.length +
      " · dominated " + tr.flags.dominated.length + " · γ>1 on " + amp + " · mean γ " + mean.toFixed(3);
    h.append(t, sub);
    const box = document.createElement("div"); box.className = "toks"; box.dataset.panel = idx;
    el.append(h, box);
    root.append(el);
    const cls = new Array(n).fill("");
    const add = (key, c) => tr.flags[key].forEach((i) => { cls[i] += " " + c; });
    add("preplan", "pp"); add("anchor", "an"); add("dominated", "dm"); add("intro", "in");
    return { p: p, tr: tr, box: box, cls: cls, spans: new Array(n), built: 0 };
  }

  function buildSome(P) {
    const s = scale(P.p, signal);
    const frag = document.createDocumentFragment();
    const end = Math.min(P.tr.tokens.length, P.built + data.batch);
    for (let i = P.built; i < end; i++) {
      const sp = document.createElement("span");
      sp.className = "tok" + P.cls[i];
      sp.dataset.i = i;
      sp.textContent = shown(P.tr.tokens[i]);
      sp.style.background = colour(s.values[i], s, signal);
      P.spans[i] = sp;
      frag.append(sp);
    }
    P.box.append(frag);
    P.built = end;
    return end >= P.tr.tokens.length;
  }

  function drawLinks(P) {
    P.box.querySelectorAll(".link").forEach((e) => e.remove());
    if (P.p.strategy !== "coupled") return;  // the links are the coupled strategy's credit moves
    const base = P.box.getBoundingClientRect();
    const frag = document.createDocumentFragment();
    const dx = P.box.scrollLeft - base.left, dy = P.box.scrollTop - base.top;
    for (const [u, t] of P.tr.links) {
      const a = P.spans[u], b = P.spans[t];
      if (!a || !b) continue;
      const ra = a.getClientRects(), rb = b.getClientRects();
      if (!ra.length || !rb.length) continue;
      const A = ra[ra.length - 1], B = rb[0];
      const x1 = A.left + A.width / 2 + dx, x2 = B.left + B.width / 2 + dx;
      const mk = (left, top, width, cut) => {
        const d = document.createElement("div"); d.className = "link" + (cut ? " cut" : "");
        d.style.left = left + "px"; d.style.top = top + "px"; d.style.width = Math.max(6, width) + "px"; d.style.height = "7px";
        d.title = "intro " + u + " → anchor " + t;
        frag.append(d);
      };
      if (Math.abs(A.top - B.top) < 3 && x2 > x1) mk(x1, A.top + dy - 8, x2 - x1, false);
      else { mk(x1, A.top + dy - 8, 14, true); mk(x2 - 14, B.top + dy - 8, 14, true); }
    }
    P.box.append(frag);
  }

  function build() {
    data.panels.forEach((p, i) => panels.push(makePanel(p, i)));
    legend();
    let k = 0;
    const step = () => {
      if (k < panels.length && buildSome(panels[k])) { drawLinks(panels[k]); k++; }
      if (k < panels.length) nextFrame(step);
      else document.body.dataset.rendered = "done";
    };
    nextFrame(step);
  }

  function recolour() {
    legend();
    let k = 0, i = 0;
    const step = () => {
      let budget = data.batch * 4;
      while (k < panels.length && budget > 0) {
        const P = panels[k], s = scale(P.p, signal);
        const end = Math.min(P.built, i + budget);
        budget -= end - i;
        for (; i < end; i++) P.spans[i].style.background = colour(s.values[i], s, signal);
        if (i >= P.built) { k++; i = 0; }
      }
      if (k < panels.length) nextFrame(step);
    };
    nextFrame(step);
  }

  function onOver(ev) {
    const sp = ev.target.closest ? ev.target.closest(".tok[data-i]") : null;
    if (!sp) { tip.hidden = true; return; }
    const box = sp.parentElement, P = panels[+box.dataset.panel], tr = P.tr, i = +sp.dataset.i;
    const has = (key) => tr.flags[key].indexOf(i) >= 0;
    const lines = ["#" + i + "  " + JSON.stringify(tr.tokens[i]) + "  id " + tr.ids[i],
      "WAAD   " + fmt(tr.waad[i]), "Δ WAAD " + fmt(tr.delta[i]),
      "FAI    " + (tr.fai[i] === null ? "undefined (horizon empty)" : fmt(tr.fai[i]))];
    for (const s in tr.gammas) lines.push((s === P.p.strategy ? "▶ " : "  ") + "γ " + s + " = " + fmt(tr.gammas[s][i]));
    const f = ["preplan", "anchor", "dominated", "intro"].filter(has);
    lines.push("marks: " + (f.length ? f.join(", ") : "none"));
    for (const [u, t] of tr.links) {
      if (t === i) lines.push("introduced by #" + u + " " + JSON.stringify(tr.tokens[u]));
      if (u === i) lines.push("introduces anchor #" + t + " " + JSON.stringify(tr.tokens[t]));
    }
    tip.textContent = lines.join("\n");
    tip.hidden = false;
    const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = ev.clientY + 18 + tip.offsetHeight > window.innerHeight ? ev.clientY - tip.offsetHeight - 10 : ev.clientY + 18;
    tip.style.left = x + "px"; tip.style.top = y + "px";
  }

  sel.addEventListener("change", () => { signal = sel.value; recolour(); });
  document.getElementById("marks").addEventListener("change", (e) => root.classList.toggle("nomarks", !e.target.checked));
  document.getElementById("links").addEventListener("change", (e) => root.classList.toggle("nolinks", !e.target.checked));
  root.addEventListener("mouseover", onOver);
  root.addEventListener("mouseleave", () => { tip.hidden = true; });
  let timer = null;
  window.addEventListener("resize", () => { clearTimeout(timer); timer = setTimeout(() => panels.forEach(drawLinks), 150); });
  build();
})();
