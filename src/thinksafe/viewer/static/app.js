// thinksafe view: plain JS, no build step. Every model text is set with textContent, never as HTML.
"use strict";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let RUNS = [];

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined && k !== false)
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

async function api(path) {
  if (window.THINKSAFE_STATIC) return window.THINKSAFE_STATIC(path);
  const r = await fetch("api/" + path);  // the server's API (a static bundle answers from data.js)
  const d = await r.json();
  if (!r.ok) throw new Error(d.error || r.statusText);
  return d;
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString("en-US") : v.toFixed(digits);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
const pill = (v) => h("span", {class: "pill " + String(v ?? ""), text: v ?? "–"});

function parseHash() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return {parts, params: new URLSearchParams(query || "")};
}
function go(parts, params) {
  const q = params && params.toString();
  location.hash = "#/" + parts.map(encodeURIComponent).join("/") + (q ? "?" + q : "");
}

function table(cols, rows, opts = {}) {
  const t = h("table", {id: opts.id});
  t.append(h("tr", {}, cols.map(c => h("th", {class: opts.sort && c.sort ? "sortable" : null,
    on: opts.sort && c.sort ? {click: () => opts.sort(c.sort)} : {}}, c.label))));
  for (const r of rows) {
    const tr = h("tr", {class: opts.click ? "clickable" : null, "data-id": r.id,
      on: opts.click ? {click: () => opts.click(r)} : {}});
    for (const c of cols) {
      const v = c.get ? c.get(r) : r[c.key];
      tr.append(h("td", {}, v instanceof Node ? v : fmt(v)));
    }
    t.append(tr);
  }
  return t;
}

// Harmful text is hidden until asked.
function guarded(text, hidden, what) {
  const pre = h("pre", {class: "harmful-text"}, text ?? "");
  if (!hidden) return pre;
  const box = h("div", {class: "hidden-box"},
    h("p", {}, `This ${what || "completion"} was judged or labelled harmful; it is hidden. `),
    h("button", {class: "reveal", on: {click: () => { box.replaceWith(h("div", {class: "revealed"}, pre)); }}},
      "Show harmful text"));
  return box;
}

function responseView(c, hidden) {
  if (!c) return h("p", {class: "muted"}, "no completion");
  const body = h("div", {},
    h("details", {class: "reasoning", open: true}, h("summary", {}, `reasoning (${(c.reasoning || "").length} chars)`),
      h("pre", {}, c.reasoning || "")),
    h("h4", {}, "answer"), h("pre", {class: "answer"}, c.answer ?? "(no answer: no </think>)"));
  if (!hidden) return body;
  const box = h("div", {class: "hidden-box"},
    h("p", {}, "This completion was judged or labelled harmful; it is hidden. "),
    h("button", {class: "reveal", on: {click: () => box.replaceWith(h("div", {class: "revealed"}, body))}},
      "Show harmful text"));
  return box;
}

// ------------------------------------------------------------------ markdown (tables, headings, text)
function markdown(md) {
  const out = h("div", {class: "md"});
  const lines = (md || "").split("\n");
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i];
    if (/^\s*\|/.test(l)) {
      const rows = [];
      while (i < lines.length && /^\s*\|/.test(lines[i])) rows.push(lines[i++]);
      i--;
      const cells = rows.filter(r => !/^\s*\|[\s:|-]+\|\s*$/.test(r))
        .map(r => r.trim().replace(/^\||\|$/g, "").split("|").map(s => s.trim()));
      const t = h("table", {});
      cells.forEach((cs, k) => t.append(h("tr", {}, cs.map(c => h(k ? "td" : "th", {}, c)))));
      out.append(t);
    } else if (/^#+ /.test(l)) {
      out.append(h("h" + Math.min(6, l.match(/^#+/)[0].length + 1), {}, l.replace(/^#+ /, "")));
    } else if (/^!\[.*\]\((.*)\)/.test(l)) {
      // plots are shown apart
    } else if (l.trim()) out.append(h("p", {}, l));
  }
  return out;
}

// ------------------------------------------------------------------ pages
async function pageHome() {
  main.replaceChildren(h("h2", {}, "Runs"),
    table([{label: "run", get: r => h("a", {href: `#/run/${r.run}`}, r.name)},
           {label: "path", key: "path"},
           {label: "training data", get: r => h("a", {href: `#/data/${r.run}`}, "samples")},
           {label: "evaluated models", get: r => Object.keys(r.models).join(", ") || "–"}], RUNS));
}

async function pageRun(run) {
  const d = await api(`run/${run}`);
  const kids = [h("h2", {}, `Run ${d.name}`), h("p", {class: "muted"}, d.path),
    h("p", {}, h("a", {href: `#/data/${run}`}, "training data"), " · ",
      h("a", {href: `#/eval`}, "evaluation"))];
  kids.push(h("h3", {}, "Stages"), table([
    {label: "stage", key: "stage"}, {label: "status", key: "status"},
    {label: "key", get: r => (r.key || "").toString().slice(0, 12)},
    {label: "seconds", key: "seconds"}, {label: "FLOPs", get: r => r.flops == null ? "–" : Number(r.flops).toExponential(2)},
    {label: "finished", key: "finished"}], d.stages, {id: "stages"}));
  if (d.dataset_stats) {
    const s = d.dataset_stats;
    kids.push(h("h3", {}, "Dataset"), table([{label: "", key: "k"}, {label: "", key: "v"}],
      [{k: "total", v: s.total}, {k: "kept", v: s.kept},
       ...Object.entries(s.dropped || {}).map(([k, v]) => ({k: "dropped: " + k, v: h("a", {href: `#/data/${run}?drop=${k}`}, fmt(v))})),
       ...Object.entries(s.acceptance || {}).map(([k, v]) => ({k: "acceptance: " + k, v}))], {id: "dataset-stats"}));
  }
  if (d.report_md) kids.push(h("h3", {}, "Report"), markdown(d.report_md));
  if (d.compare_md) kids.push(h("h3", {}, "Compare"), markdown(d.compare_md));
  if (d.images.length) kids.push(h("h3", {}, "Plots"),
    h("div", {}, d.images.map(f => h("img", {class: "plot", src: window.THINKSAFE_STATIC ? `data/run${run}/${f}` : `api/run/${run}/file/${encodeURIComponent(f)}`, alt: f}))));
  if (d.train_summary) kids.push(h("h3", {}, "Training"), h("pre", {}, JSON.stringify(d.train_summary, null, 2)));
  if (d.config_yaml) kids.push(h("details", {}, h("summary", {}, "config.yaml"), h("pre", {id: "config"}, d.config_yaml)));
  main.replaceChildren(...kids);
}

const FACETS = ["drop", "label", "category", "steering", "verdict", "finish"];
async function pageData(run, params) {
  const q = new URLSearchParams(params);
  if (!q.get("limit")) q.set("limit", "50");
  const d = await api(`run/${run}/samples?${q}`);
  const setParam = (k, v, toggle) => {
    const p = new URLSearchParams(params);
    if (toggle) {
      const vals = p.getAll(k); p.delete(k);
      (vals.includes(v) ? vals.filter(x => x !== v) : [...vals, v]).forEach(x => p.append(k, x));
    } else if (v === null || v === "") p.delete(k); else p.set(k, v);
    if (k !== "offset") p.delete("offset");
    go(["data", run], p);
  };
  const facets = h("div", {class: "facets"}, FACETS.map(f => h("div", {class: "facet", "data-facet": f},
    h("b", {}, f === "drop" ? "drop reason" : f),
    Object.entries(d.facets[f] || {}).map(([v, n]) => h("a", {
      href: "javascript:void(0)", class: params.getAll(f).includes(v) ? "on" : null, "data-value": v,
      on: {click: () => setParam(f, v, true)}}, h("span", {}, v), h("span", {class: "n"}, fmt(n)))))));
  const search = h("input", {id: "search", type: "search", placeholder: "full-text search", value: params.get("q") || ""});
  search.addEventListener("keydown", e => { if (e.key === "Enter") setParam("q", search.value); });
  const sorts = ["order", "id", "p_safe", "tokens", "chars", "drop", "verdict", "label", "category"];
  const sortSel = h("select", {id: "sort", on: {change: e => setParam("sort", e.target.value)}},
    sorts.map(s => h("option", {value: s, selected: (params.get("sort") || "order") === s}, "sort: " + s)));
  const desc = h("label", {}, h("input", {type: "checkbox", id: "desc", checked: params.get("desc") === "1",
    on: {change: e => setParam("desc", e.target.checked ? "1" : "")}}), " descending");
  const off = Number(params.get("offset") || 0), lim = Number(q.get("limit"));
  const pager = h("span", {},
    h("button", {disabled: off <= 0, on: {click: () => setParam("offset", String(Math.max(0, off - lim)))}}, "‹ prev"),
    ` ${d.total ? off + 1 : 0}–${Math.min(off + lim, d.total)} `,
    h("button", {disabled: off + lim >= d.total, on: {click: () => setParam("offset", String(off + lim))}}, "next ›"));
  const rows = table([
    {label: "id", get: r => h("a", {href: `#/sample/${run}/${encodeURIComponent(r.id)}`}, r.id)},
    {label: "label", key: "label"}, {label: "category", key: "category"}, {label: "steering", key: "steering"},
    {label: "verdict", get: r => pill(r.verdict)}, {label: "P(safe)", key: "p_safe"},
    {label: "drop reason", get: r => pill(r.drop)}, {label: "finish", key: "finish"},
    {label: "tokens", key: "tokens"}], d.rows,
    {id: "samples", click: r => go(["sample", run, r.id])});
  main.replaceChildren(h("h2", {}, `Training data — ${RUNS[run] ? RUNS[run].name : run}`),
    h("div", {class: "toolbar"}, search, sortSel, desc,
      h("span", {}, h("b", {id: "count"}, fmt(d.total)), ` of ${fmt(d.all)} samples`), pager,
      d.torn_lines_skipped ? h("span", {class: "mark"}, `${d.torn_lines_skipped} torn line skipped (run still writing)`) : null,
      h("a", {href: `#/data/${run}`}, "clear filters")),
    h("div", {class: "layout"}, facets, h("div", {}, rows)));
}

async function pageSample(run, rid) {
  const s = await api(`run/${run}/sample/${encodeURIComponent(rid)}`);
  const v = s.verdict;
  const kv = (rows) => h("table", {class: "kv"}, rows.map(([k, x]) => h("tr", {}, h("td", {}, k), h("td", {}, x instanceof Node ? x : fmt(x)))));
  const gi = s.guard_input;
  main.replaceChildren(
    h("p", {}, h("a", {href: `#/data/${run}`}, "‹ training data")),
    h("h2", {}, `Sample ${s.id}`),
    kv([["label", s.label], ["category", (s.meta || {}).category], ["steering", s.steering], ["source", s.source],
        ["drop reason", pill(s.drop)], ["finish reason", s.completion && s.completion.finish_reason],
        ["completion tokens", s.completion && s.completion.completion_tokens],
        ["verdict", v ? pill(v.label) : "not judged"], ["P(safe)", v && v.p_safe], ["guard", v && v.guard],
        ["guard category", v && v.category], ["download", h("a", {id: "download", download: `${s.id}.json`,
          href: "data:application/json," + encodeURIComponent(JSON.stringify(s, null, 2))}, "this sample as JSON")]]),
    h("h3", {}, "Original prompt"), h("pre", {id: "prompt"}, s.prompt),
    h("h3", {}, "Steered prompt (sent to the model)"), h("pre", {id: "steered"}, s.steered_prompt),
    h("h3", {}, "Response"), responseView(s.completion, s.hidden),
    h("h3", {}, "Guard input (as the guard saw it)"),
    gi ? h("div", {}, h("p", {class: "muted"}, "The guard judges the ORIGINAL prompt and the full response."),
      gi.cut_tokens_at_end ? h("p", {class: "mark", id: "guard-cut"}, `shortened: the last ${gi.cut_tokens_at_end} tokens of the response were cut to fit the guard's input limit`) : h("p", {class: "muted"}, "not shortened"),
      guarded(gi.response, s.hidden, "guard input")) : h("p", {class: "muted"}, "not judged"),
    h("h3", {}, "Verdict"), h("pre", {id: "verdict"}, v ? JSON.stringify(v, null, 2) : "none"));
}

async function pageEval(params) {
  const models = [];
  RUNS.forEach(r => Object.entries(r.models).forEach(([tag, benches]) => models.push({spec: `${r.run}:${tag}`, name: `${r.name} / ${tag}`, benches})));
  if (!models.length) { main.replaceChildren(h("p", {}, "No evaluation in these runs.")); return; }
  const p = new URLSearchParams(params);
  const has = s => models.some(m => m.spec === s);
  if (!has(p.get("a"))) p.set("a", models[0].spec);
  if (!has(p.get("b"))) p.set("b", (models.find(m => m.spec !== p.get("a")) || models[0]).spec);
  const ma = models.find(m => m.spec === p.get("a")), mb = models.find(m => m.spec === p.get("b"));
  const benches = ma.benches.filter(b => mb.benches.includes(b));
  if (!benches.includes(p.get("bench"))) p.set("bench", benches[0]);
  const q = new URLSearchParams(p); if (!q.get("limit")) q.set("limit", "50");
  const d = await api(`eval?${q}`);
  const set = (k, v) => { const x = new URLSearchParams(p); if (v) x.set(k, v); else x.delete(k); if (k !== "offset") x.delete("offset"); go(["eval"], x); };
  const sel = (k, opts) => h("select", {id: "sel-" + k, on: {change: e => set(k, e.target.value)}},
    opts.map(o => h("option", {value: o.spec || o, selected: (o.spec || o) === p.get(k)}, o.name || o)));
  const changes = h("div", {class: "changes", id: "changes"}, "what changed: ",
    h("a", {href: "javascript:void(0)", class: !p.get("changed") ? "on" : null, on: {click: () => set("changed", "")}}, "all"),
    h("a", {href: "javascript:void(0)", "data-change": "any", class: p.get("changed") === "any" ? "on" : null, on: {click: () => set("changed", "any")}}, "any change"),
    Object.entries(d.changes).map(([k, n]) => h("a", {href: "javascript:void(0)", "data-change": k, class: p.get("changed") === k ? "on" : null,
      on: {click: () => set("changed", k)}}, `${k} (${n})`)));
  const detail = h("div", {id: "detail"});
  const t = table([
    {label: "id", key: "id"}, {label: "kind", get: r => r.a.kind},
    {label: "A: " + ma.name, get: r => pill(r.a.outcome)}, {label: "B: " + mb.name, get: r => pill(r.b && r.b.outcome)},
    {label: "A verdict", get: r => r.a.verdict}, {label: "B verdict", get: r => r.b && r.b.verdict}], d.rows,
    {id: "eval-table", click: r => showPair(r.id)});
  async function showPair(id) {
    const x = await api(`eval/item?${new URLSearchParams({a: p.get("a"), b: p.get("b"), bench: p.get("bench"), id})}`);
    const col = (s, name) => s ? h("div", {class: "side-" + name},
      h("h4", {}, `${name === "a" ? "A" : "B"}: ${s.run} / ${s.tag}`),
      h("p", {}, "outcome ", pill(s.outcome), " · verdict ", pill(s.verdict && s.verdict.label),
        s.trace_verdict ? [" · trace ", pill(s.trace_verdict)] : null,
        s.answer_verdict ? [" · answer ", pill(s.answer_verdict)] : null,
        s.refusal !== undefined ? [" · refusal ", pill(String(s.refusal))] : null,
        s.score ? [` · ${s.score.correct ? "right" : "wrong"}`, s.score.reason ? ` (${s.score.reason})` : "",
          ` pred=${fmt(s.score.pred)} gold=${fmt(s.score.gold)}`] : null,
        ` · finish ${s.finish_reason} · ${fmt(s.completion_tokens)} tokens`),
      responseView({reasoning: s.reasoning, answer: s.answer}, s.hidden)) : h("div", {}, "not evaluated");
    detail.replaceChildren(h("h3", {}, `Prompt ${id}`), h("pre", {id: "eval-prompt"}, x.a ? x.a.prompt : ""),
      h("div", {class: "side", id: "side-by-side"}, col(x.a, "a"), col(x.b, "b")));
    detail.scrollIntoView();
  }
  const ms = (m) => h("pre", {}, JSON.stringify(m, (k, v) => (k === "ci95" ? undefined : v), 1).slice(0, 1500));
  main.replaceChildren(h("h2", {}, "Evaluation"),
    h("div", {class: "toolbar"}, "A ", sel("a", models), " B ", sel("b", models), " benchmark ", sel("bench", benches),
      d.kinds.length > 1 ? [" kind ", sel("kind", ["", ...d.kinds].map(k => ({spec: k, name: k || "all"})))] : null),
    changes, h("p", {}, h("b", {id: "eval-count"}, fmt(d.total)), " prompts"),
    h("details", {}, h("summary", {}, "metrics"), h("div", {class: "side"}, ms(d.metrics.a), ms(d.metrics.b))),
    t, detail);
  if (p.get("id")) showPair(p.get("id"));
}

async function route() {
  const {parts, params} = parseHash();
  try {
    if (!RUNS.length) RUNS = await api("runs");
    nav.replaceChildren(...RUNS.flatMap(r => [h("a", {href: `#/run/${r.run}`}, r.name), h("a", {href: `#/data/${r.run}`}, "data")]),
      h("a", {href: "#/eval"}, "evaluation"));
    if (parts[0] === "run") await pageRun(parts[1]);
    else if (parts[0] === "data") await pageData(parts[1], params);
    else if (parts[0] === "sample") await pageSample(parts[1], parts.slice(2).join("/"));
    else if (parts[0] === "eval") await pageEval(params);
    else if (RUNS.length === 1 && !parts.length) await pageRun(0);
    else await pageHome();
    main.setAttribute("data-ready", location.hash);
  } catch (e) {
    main.replaceChildren(h("p", {class: "error"}, "error: " + e.message));
    main.setAttribute("data-ready", "error");
  }
}
window.addEventListener("hashchange", route);
route();
