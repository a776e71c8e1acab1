// thinksafe view, static bundle: answers the viewer's API calls from window.BUNDLE (data.js), no server.
"use strict";
(function () {
  const B = window.BUNDLE;
  const FACETS = ["label", "category", "steering", "verdict", "drop", "finish"];
  const CHANGES = B.changes;
  const label = v => (v === null || v === undefined || v === "") ? "(none)" : String(v);
  const page = (rows, q) => { const off = Number(q.get("offset") || 0), lim = Number(q.get("limit") || 50); return rows.slice(off, off + lim); };
  function samples(run, q) {
    let base = B.rows[run];
    const text = (q.get("q") || "").toLowerCase();
    if (text) base = base.filter(r => { const s = B.samples[run][r.id]; return (s.prompt + "\n" + ((s.completion || {}).text || "")).toLowerCase().includes(text); });
    const filt = (rows, skip) => {
      for (const f of [...FACETS, "hidden"]) {
        const want = q.getAll(f).filter(Boolean);
        if (f !== skip && want.length) rows = rows.filter(r => want.includes(label(r[f])));
      }
      return rows;
    };
    let rows = filt(base, null);
    const key = q.get("sort") || "order", desc = q.get("desc") === "1";
    if (key !== "order") {
      rows = [...rows].sort((a, b) => { const x = a[key], y = b[key];
        if (x === y) return 0; if (x === null) return 1; if (y === null) return -1;
        return (x < y ? -1 : 1) * (desc ? -1 : 1); });
    } else if (desc) rows = [...rows].reverse();
    const facets = {};
    for (const f of FACETS) { const c = {}; filt(base, f).forEach(r => { c[label(r[f])] = (c[label(r[f])] || 0) + 1; });
      facets[f] = Object.fromEntries(Object.entries(c).sort((a, b) => b[1] - a[1])); }
    return {total: rows.length, all: B.rows[run].length, offset: Number(q.get("offset") || 0), torn_lines_skipped: 0, facets, rows: page(rows, q)};
  }
  function ev(q) {
    const bench = q.get("bench") || "organism";
    const A = B.eval[q.get("a")][bench], Bb = B.eval[q.get("b")][bench];
    const byId = Object.fromEntries(Bb.rows.map(r => [r.id, r]));
    let pairs = A.rows.map(a => ({id: a.id, a, b: byId[a.id] || null}));
    const allKinds = [...new Set(pairs.map(p => p.a.kind).filter(Boolean))].sort();
    const kinds = q.getAll("kind").filter(Boolean); if (kinds.length) pairs = pairs.filter(p => kinds.includes(p.a.kind));
    const counts = {};
    for (const p of pairs) for (const [k, [x, y]] of Object.entries(CHANGES))
      if (p.b && p.a.outcome === x && p.b.outcome === y) counts[k] = (counts[k] || 0) + 1;
    const ch = q.get("changed");
    if (ch && CHANGES[ch]) pairs = pairs.filter(p => p.b && p.a.outcome === CHANGES[ch][0] && p.b.outcome === CHANGES[ch][1]);
    else if (ch === "any") pairs = pairs.filter(p => p.b && p.a.outcome !== p.b.outcome);
    return {total: pairs.length, changes: counts, bench, kinds: allKinds, metrics: {a: A.metrics, b: Bb.metrics}, rows: page(pairs, q)};
  }
  window.THINKSAFE_STATIC = async function (path) {
    const [p, qs] = path.split("?"); const q = new URLSearchParams(qs || ""); const parts = p.split("/");
    if (p === "runs") return B.runs;
    if (parts[0] === "run" && parts.length === 2) return B.info[parts[1]];
    if (parts[0] === "run" && parts[2] === "samples") return samples(parts[1], q);
    if (parts[0] === "run" && parts[2] === "sample") { const s = B.samples[parts[1]][decodeURIComponent(parts.slice(3).join("/"))]; if (!s) throw new Error("no such sample"); return s; }
    if (p === "eval") return ev(q);
    if (p === "eval/item") { const bench = q.get("bench"), id = q.get("id");
      return {id, bench, a: B.eval[q.get("a")][bench].items[id] || null, b: B.eval[q.get("b")][bench].items[id] || null}; }
    throw new Error("not in this bundle: " + path);
  };
})();
