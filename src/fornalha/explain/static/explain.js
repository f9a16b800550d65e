// fornalha explain: the view of one explanation (see fornalha/explain/analysis.py for the data).
// Plain JavaScript, no framework. State: which token is selected (pinned by a click, previewed by
// hover), which layer, and which head ("avg" = the mean over heads).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const state = { data: null, att: null, L: 0, H: 0, T: 0, sel: 1, hover: null, layer: 0, head: "avg",
                  colorBy: "surprisal" };

  // ---- data -------------------------------------------------------------------------------
  // Attention arrives as uint16 lower triangles (row i holds i + 1 weights), base64-encoded.
  function load(data) {
    const a = data.attention;
    const bin = atob(a.data);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    state.data = data;
    state.att = new Uint16Array(bytes.buffer);
    state.L = a.n_layer; state.H = a.n_head; state.T = a.T;
    state.sel = Math.min(1, state.T - 1); state.hover = null;
    state.layer = Math.min(state.layer, state.L - 1);
    if (state.head !== "avg" && state.head >= state.H) state.head = "avg";
  }
  const tri = (T) => (T * (T + 1)) / 2;
  // weight of query i on key j (j <= i) in layer l, head h ("avg": mean over heads)
  function weight(l, h, i, j) {
    if (j > i) return 0;
    const off = (i * (i + 1)) / 2 + j, size = tri(state.T);
    if (h === "avg") {
      let s = 0;
      for (let k = 0; k < state.H; k++) s += state.att[(l * state.H + k) * size + off];
      return s / state.H / 65535;
    }
    return state.att[(l * state.H + h) * size + off] / 65535;
  }
  const current = () => (state.hover !== null ? state.hover : state.sel);
  const show = (s) => s.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "·");
  const pct = (p) => (p >= 0.1 ? (100 * p).toFixed(1) : (100 * p).toFixed(2)) + " %";
  function surprisalColor(bits) {
    if (bits === null) return "hsl(0, 0%, 90%)";
    const x = Math.min(1, bits / 12);  // 0 bits: green (expected), 12+ bits: red (surprising)
    return `hsl(${130 - 130 * x}, ${60 + 20 * x}%, ${82 - 20 * x}%)`;
  }
  function heatColor(w) {  // white -> deep orange, ∝ √weight
    const x = Math.sqrt(Math.max(0, Math.min(1, w)));
    return [255 - 61 * x, 255 - 190 * x, 255 - 243 * x];
  }

  // ---- 1. tokens --------------------------------------------------------------------------
  function renderTokens() {
    const box = $("tokens");
    box.textContent = "";
    state.data.tokens.forEach((t, i) => {
      const el = document.createElement("span");
      el.className = "tok" + (t.special ? " special" : "");
      el.dataset.i = i;
      el.dataset.testid = "token";
      const txt = document.createElement("span");
      txt.className = "t";
      txt.textContent = t.special ? t.text : show(t.text);
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = `#${t.id} · ${t.bytes}B`;
      el.append(txt, meta);
      el.title = t.loss_bits === null ? "the first token: nothing before it to predict it from"
        : `loss ${t.loss_bits.toFixed(2)} bits`;
      el.addEventListener("mouseenter", () => { state.hover = i; update(); });
      el.addEventListener("mouseleave", () => { state.hover = null; update(); });
      el.addEventListener("click", () => { state.sel = i; state.hover = null; update(); });
      box.append(el);
    });
    const s = state.data.summary, m = state.data.model;
    $("n-tokens").textContent = String(state.data.tokens.length);
    $("summary").textContent = `Mean loss ${s.mean_loss_bits.toFixed(2)} bits per token` +
      (s.bits_per_byte !== null ? `, ${s.bits_per_byte.toFixed(2)} bits per byte of text (raw bytes: 8)` : "") +
      ` over ${s.tokens} predicted tokens.`;
    $("model-line").textContent = `A ${(m.parameters / 1e6).toFixed(2)}M-parameter model: ${m.n_layer} layers, ` +
      `${m.n_head} attention heads per layer, context ${m.block_size} tokens, vocabulary ${m.vocab_size}.`;
  }
  function colorTokens() {
    const c = current();
    document.querySelectorAll("#tokens .tok").forEach((el) => {
      const i = Number(el.dataset.i);
      if (state.colorBy === "surprisal") {
        el.style.background = surprisalColor(state.data.tokens[i].loss_bits);
      } else {
        const [r, g, b] = heatColor(weight(state.layer, state.head, c, i));
        el.style.background = i > c ? "rgb(238, 238, 238)" : `rgb(${r}, ${g}, ${b})`;
      }
      el.classList.toggle("selected", i === state.sel);
      el.classList.toggle("hovered", i === state.hover && i !== state.sel);
    });
  }

  // ---- 2. one token up close ----------------------------------------------------------------
  function barRow(label, value, text, actual) {
    const li = document.createElement("li");
    if (actual) li.className = "actual";
    const l = document.createElement("span"); l.className = "lbl"; l.textContent = label;
    const bar = document.createElement("span"); bar.className = "bar"; bar.style.width = `${100 * value}%`;
    const wrap = document.createElement("span"); wrap.append(bar);
    const v = document.createElement("span"); v.className = "val"; v.textContent = text;
    li.append(l, wrap, v);
    return li;
  }
  function renderFocus() {
    const c = current(), toks = state.data.tokens, t = toks[c];
    const headName = state.head === "avg" ? "average of the heads" : `head ${state.head}`;
    const loss = t.loss_bits === null ? "the first token, so nothing predicted it"
      : `the model gave it probability ${pct(Math.pow(2, -t.loss_bits))} (loss ${t.loss_bits.toFixed(2)} bits)`;
    const focus = $("focus");
    focus.textContent = "";
    focus.append(`Token ${c}: `);
    const code = document.createElement("code");
    code.textContent = t.special ? t.text : show(t.text);
    focus.append(code, ` (id ${t.id}, ${t.bytes} byte${t.bytes === 1 ? "" : "s"}); ${loss}.`);
    focus.dataset.selected = String(c);
    $("attends-title").textContent = `What it attends to (layer ${state.layer}, ${headName})`;
    const att = $("attends");
    att.textContent = "";
    for (let j = 0; j <= c; j++) {
      const w = weight(state.layer, state.head, c, j);
      const lbl = `${j}: ${toks[j].special ? toks[j].text : show(toks[j].text)}`;
      att.append(barRow(lbl, w, pct(w), false));
    }
    const top = $("topk");
    top.textContent = "";
    const next = c + 1 < toks.length ? toks[c + 1].id : null;
    state.data.top[c].forEach((o) => top.append(barRow(o.text.length ? show(o.text) : "∅", o.p, pct(o.p), o.id === next)));
  }

  // ---- 3. attention heatmaps ----------------------------------------------------------------
  function paint(canvas, l, h) {
    const T = state.T;
    canvas.width = T; canvas.height = T;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(T, T);
    for (let i = 0; i < T; i++) {
      for (let j = 0; j < T; j++) {
        const p = 4 * (i * T + j);
        const [r, g, b] = j > i ? [238, 236, 234] : heatColor(weight(l, h, i, j));
        img.data[p] = r; img.data[p + 1] = g; img.data[p + 2] = b; img.data[p + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }
  function renderHeatmap() {
    const cv = $("heatmap");
    paint(cv, state.layer, state.head);
    const px = Math.max(2, Math.min(24, Math.floor(560 / state.T)));
    cv.style.width = `${px * state.T}px`; cv.style.height = `${px * state.T}px`;
    const mark = $("row-mark");  // outline the selected token's row (a box over the canvas)
    mark.style.top = `${cv.offsetTop + px * current() - 1}px`;
    mark.style.left = `${cv.offsetLeft - 1}px`;
    mark.style.width = `${px * state.T + 2}px`;
    mark.style.height = `${px + 2}px`;
  }
  function renderGrid() {
    const grid = $("grid");
    grid.textContent = "";
    for (let l = 0; l < state.L; l++) {
      const row = document.createElement("div");
      row.className = "layer-row";
      const name = document.createElement("span"); name.textContent = `layer ${l}`;
      row.append(name);
      const heads = [...Array(state.H).keys(), "avg"];
      heads.forEach((h) => {
        const fig = document.createElement("figure");
        fig.dataset.layer = l; fig.dataset.head = h;
        if (l === state.layer && h === state.head) fig.classList.add("chosen");
        const cv = document.createElement("canvas");
        paint(cv, l, h);
        const cap = document.createElement("figcaption");
        cap.textContent = h === "avg" ? "average" : `head ${h}`;
        fig.append(cv, cap);
        fig.addEventListener("click", () => { state.layer = l; state.head = h; syncSelects(); update(true); });
        row.append(fig);
      });
      grid.append(row);
    }
  }
  function syncSelects() {
    $("layer").value = String(state.layer);
    $("head").value = String(state.head);
    document.querySelectorAll("#grid figure").forEach((f) =>
      f.classList.toggle("chosen", f.dataset.layer === String(state.layer) && f.dataset.head === String(state.head)));
  }
  function cellAt(ev) {
    const cv = $("heatmap"), r = cv.getBoundingClientRect();
    const j = Math.floor(((ev.clientX - r.left) / r.width) * state.T);
    const i = Math.floor(((ev.clientY - r.top) / r.height) * state.T);
    return [Math.max(0, Math.min(state.T - 1, i)), Math.max(0, Math.min(state.T - 1, j))];
  }

  // ---- wiring -------------------------------------------------------------------------------
  function update(heat) {
    colorTokens();
    renderFocus();
    renderHeatmap();
    if (heat) syncSelects();
  }
  function render(data) {
    load(data);
    const layer = $("layer"), head = $("head");
    layer.textContent = ""; head.textContent = "";
    for (let l = 0; l < state.L; l++) layer.append(new Option(`${l}`, String(l)));
    head.append(new Option("average of heads", "avg"));
    for (let h = 0; h < state.H; h++) head.append(new Option(`${h}`, String(h)));
    renderTokens();
    renderGrid();
    syncSelects();
    update();
    $("view").hidden = false;
    $("empty").hidden = true;
    document.body.dataset.ready = "true";
  }
  function init() {
    $("layer").addEventListener("change", (e) => { state.layer = Number(e.target.value); update(true); });
    $("head").addEventListener("change", (e) => {
      state.head = e.target.value === "avg" ? "avg" : Number(e.target.value); update(true);
    });
    document.querySelectorAll('input[name="color-by"]').forEach((r) =>
      r.addEventListener("change", (e) => { state.colorBy = e.target.value; colorTokens(); }));
    const cv = $("heatmap");
    cv.addEventListener("mousemove", (ev) => {
      const [i, j] = cellAt(ev), toks = state.data.tokens;
      const lab = (k) => (toks[k].special ? toks[k].text : show(toks[k].text));
      $("cell-info").textContent = j > i ? `token ${i} cannot see later token ${j}`
        : `token ${i} "${lab(i)}" → token ${j} "${lab(j)}": ${pct(weight(state.layer, state.head, i, j))}`;
    });
    cv.addEventListener("click", (ev) => { state.sel = cellAt(ev)[0]; state.hover = null; update(); });

    const embedded = JSON.parse($("explain-data").textContent);
    if (document.body.dataset.mode === "live") {
      $("ask").hidden = false;
      if (!embedded) $("empty").hidden = false;
      $("ask").addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const text = $("text-input").value;
        const status = $("status");
        status.className = ""; status.textContent = "The model is reading the text…";
        $("explain-button").disabled = true;
        try {
          const res = await fetch("/v1/explain", { method: "POST", headers: { "Content-Type": "application/json" },
                                                   body: JSON.stringify({ text: text }) });
          const body = await res.json();
          if (!res.ok) throw new Error(body.error ? body.error.message : `HTTP ${res.status}`);
          render(body);
          status.textContent = `${body.tokens.length} tokens explained.`;
        } catch (err) {
          status.className = "error"; status.textContent = `Error: ${err.message}`;
        } finally {
          $("explain-button").disabled = false;
        }
      });
      $("text-input").addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) $("ask").requestSubmit();
      });
    }
    if (embedded) render(embedded);
  }
  init();
})();
