// The report page's unit explorer (inlined into report.html by repsub.analysis.page; offline, no library).
// Reads the JSON of repsub.analysis.explorer: filters and sorts the units rows, shows one page of
// thumbnails at a time, draws RS against selectivity for the filtered rows (a click opens the unit), and
// opens a unit's detail in a dialog (also from the address: #unit=LAYER/UNIT/METHOD).
"use strict";
(() => {
  const D = JSON.parse(document.getElementById("explorer-data").textContent);
  const $ = (id) => document.getElementById(id);
  const U = D.units, R = D.rows;
  const REASONS = Object.keys(D.reasons), STATUSES = Object.keys(D.statuses);
  const CATEGORY_COLOURS = {
    included: "#1f77b4", dead: "#7f7f7f", no_response: "#e6550d", nonfinite: "#d62728",
    no_selectivity: "#9467bd", nan_selectivity: "#8c564b",
  };
  const nRows = R.unit.length;
  let thumbs = null; // parsed on first use: the biggest part of the page
  const thumb = (r) => {
    if (thumbs === null) thumbs = JSON.parse(document.getElementById("explorer-thumbs").textContent);
    return thumbs[r];
  };

  let exemplarThumbs = null; // parsed when a unit's detail first opens
  const exemplarThumb = (p) => {
    if (exemplarThumbs === null) exemplarThumbs = JSON.parse(document.getElementById("exemplar-thumbs").textContent);
    return p >= 0 ? exemplarThumbs[p] : null;
  };

  const layerOf = (r) => U.layer[R.unit[r]];
  const layerName = (r) => D.layers[layerOf(r)].name;
  const unitOf = (r) => U.unit[R.unit[r]];
  const methodOf = (r) => D.methods[R.method[r]];
  // With bases (D.bases), a units entry is a unit or a basis's direction (U.basis: an index into D.bases).
  const basisName = (r) => (D.bases ? D.bases[U.basis[R.unit[r]]] : "unit");
  const targetName = (r) => (basisName(r) === "unit" ? "unit" : `${basisName(r)} direction`);
  const selOf = (r) => U.sel[R.unit[r]];
  const category = (r) => (R.excluded[r] < 0 ? "included" : REASONS[R.excluded[r]]);
  const statusOf = (r) => (R.status[r] < 0 ? "unknown" : STATUSES[R.status[r]]);
  const colour = (r) => CATEGORY_COLOURS[category(r)] || "#17becf";
  const fixed = (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const sig = (v) => (v === null || v === undefined ? "–" : Number(v).toPrecision(4));
  // Importance by ablation (null without it): the ablation chosen in the form drives the card, sort and filter.
  const IMP = D.importance;
  const ablation = () => (IMP ? $("f-ablation").value : null);
  const impOf = (r) => (IMP ? U.imp[ablation()].drop[R.unit[r]] : null);
  const lossOf = (r) => (IMP ? U.imp[ablation()].loss[R.unit[r]] : null);
  const rowsOfUnit = new Map(); // units entry -> its rows, one per method
  for (let r = 0; r < nRows; r++) {
    if (!rowsOfUnit.has(R.unit[r])) rowsOfUnit.set(R.unit[r], []);
    rowsOfUnit.get(R.unit[r]).push(r);
  }

  // ------------------------------------------------------------------ filters, sorting, paging
  const form = $("filters");
  const state = { page: 0 };
  let filtered = [];
  const num = (id) => { const v = $(id).value.trim(); return v === "" ? null : Number(v); };
  const SORT_KEYS = {
    layer: null, rs: (r) => R.rs[r], selectivity: selOf, activation: (r) => R.act[r], rs_ties: (r) => R.ties[r],
    importance: impOf, loss_increase: lossOf,
  };
  function byLayer(a, b) {
    return layerOf(a) - layerOf(b) || unitOf(a) - unitOf(b) || R.method[a] - R.method[b];
  }
  function apply(keepPage = false) {
    const layer = $("f-layer").value, method = $("f-method").value, status = $("f-status").value;
    const stats = $("f-stats").value, basis = D.bases ? $("f-basis").value : "";
    const rsMin = num("f-rs-min"), rsMax = num("f-rs-max"), selMin = num("f-sel-min"), selMax = num("f-sel-max");
    const impMin = IMP ? num("f-imp-min") : null, impMax = IMP ? num("f-imp-max") : null;
    const out = [];
    for (let r = 0; r < nRows; r++) {
      if (layer !== "" && layerOf(r) !== Number(layer)) continue;
      if (basis !== "" && U.basis[R.unit[r]] !== Number(basis)) continue;
      if (method !== "" && R.method[r] !== Number(method)) continue;
      if (status !== "" && statusOf(r) !== status) continue;
      if (stats === "included" && R.excluded[r] >= 0) continue;
      if (stats === "left_out" && R.excluded[r] < 0) continue;
      if (stats !== "" && stats !== "included" && stats !== "left_out" && category(r) !== stats) continue;
      const rs = R.rs[r], sel = selOf(r);
      if (rsMin !== null && !(rs !== null && rs >= rsMin)) continue;
      if (rsMax !== null && !(rs !== null && rs <= rsMax)) continue;
      if (selMin !== null && !(sel !== null && sel >= selMin)) continue;
      if (selMax !== null && !(sel !== null && sel <= selMax)) continue;
      if (impMin !== null || impMax !== null) {
        const imp = impOf(r);
        if (imp === null || (impMin !== null && imp < impMin) || (impMax !== null && imp > impMax)) continue;
      }
      out.push(r);
    }
    const key = SORT_KEYS[$("f-sort").value];
    const sign = $("f-order").value === "desc" ? -1 : 1;
    if (key === null) out.sort((a, b) => sign * byLayer(a, b));
    else {
      out.sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === null || y === null) return (x === null) - (y === null) || byLayer(a, b); // missing last
        return sign * (x - y) || byLayer(a, b);
      });
    }
    filtered = out;
    if (!keepPage) state.page = 0;
    render();
  }

  function render() {
    const size = Number($("f-page-size").value);
    const pages = Math.max(1, Math.ceil(filtered.length / size));
    state.page = Math.min(state.page, pages - 1);
    $("match-count").textContent =
      `${filtered.length.toLocaleString("en")} of ${nRows.toLocaleString("en")} units rows match`;
    $("page-label").textContent = `page ${state.page + 1} of ${pages}`;
    $("prev-page").disabled = state.page === 0;
    $("next-page").disabled = state.page >= pages - 1;
    renderGallery(filtered.slice(state.page * size, (state.page + 1) * size));
    drawScatter();
  }

  let rendering = Promise.resolve();
  function renderGallery(rows) {
    const gallery = $("gallery");
    const items = rows.map((r) => {
      const li = document.createElement("li");
      const card = document.createElement("button");
      card.type = "button";
      card.className = "card";
      card.dataset.row = r;
      card.style.borderColor = colour(r);
      const what = `${layerName(r)} ${targetName(r)} ${unitOf(r)} ${methodOf(r).toUpperCase()}`;
      card.setAttribute("aria-label",
        `${what}: RS ${fixed(R.rs[r])}, selectivity ${fixed(selOf(r))}` +
        (IMP ? `, importance ${sig(impOf(r))}` : "") + `, status ${statusOf(r)}` +
        (R.excluded[r] >= 0 ? `, left out: ${category(r)}` : ""));
      const data = thumb(r);
      const img = document.createElement("img");
      img.alt = `${methodOf(r).toUpperCase()} image of ${layerName(r)} ${targetName(r)} ${unitOf(r)}`;
      if (data) img.src = `data:image/${D.thumb.format};base64,${data}`;
      card.append(img);
      for (const [cls, text] of [
        ["what", `${layerName(r)} · ${D.bases ? basisName(r) + " " : ""}${unitOf(r)} · ${methodOf(r).toUpperCase()}`],
        ["", `RS ${fixed(R.rs[r])}`],
        ["", `sel. ${fixed(selOf(r))}`],
        ...(IMP ? [["imp", `imp. ${sig(impOf(r))}`]] : []),
      ]) {
        const span = document.createElement("span");
        if (cls) span.className = cls;
        span.style.display = "block";
        span.textContent = text;
        card.append(span);
      }
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.style.background = colour(r);
      tag.textContent = category(r) === "included" ? statusOf(r) : category(r).replace("_", " ");
      card.append(tag);
      card.addEventListener("click", () => openDetail(r, card));
      li.append(card);
      return li;
    });
    gallery.replaceChildren(...items);
    const images = Array.from(gallery.querySelectorAll("img[src]"));
    rendering = Promise.all(images.map((i) => i.decode().catch(() => null)));
    return rendering;
  }

  // ------------------------------------------------------------------ the scatter (RS vs selectivity)
  const canvas = $("scatter");
  const M = { left: 52, right: 12, top: 12, bottom: 40 };
  let points = []; // [row, x, y] in canvas pixels, drawn order
  let xRange = [0, 1];
  function drawScatter() {
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    const shown = filtered.filter((r) => selOf(r) !== null && R.rs[r] !== null);
    let lo = 0, hi = 1;
    for (const r of shown) { lo = Math.min(lo, selOf(r)); hi = Math.max(hi, selOf(r)); }
    xRange = [lo, hi];
    const px = (x) => M.left + ((x - lo) / (hi - lo)) * (w - M.left - M.right);
    const py = (y) => h - M.bottom - y * (h - M.top - M.bottom);
    ctx.strokeStyle = "#888"; ctx.fillStyle = "#333"; ctx.lineWidth = 1; ctx.font = "11px system-ui, sans-serif";
    ctx.beginPath();
    ctx.moveTo(M.left, M.top); ctx.lineTo(M.left, h - M.bottom); ctx.lineTo(w - M.right, h - M.bottom);
    ctx.stroke();
    ctx.textAlign = "center";
    for (let i = 0; i <= 4; i++) {
      const x = lo + ((hi - lo) * i) / 4;
      ctx.fillText(x.toFixed(2), px(x), h - M.bottom + 14);
    }
    ctx.fillText("class selectivity", (M.left + w - M.right) / 2, h - 6);
    ctx.textAlign = "right";
    for (let i = 0; i <= 4; i++) ctx.fillText((i / 4).toFixed(2), M.left - 4, py(i / 4) + 4);
    ctx.save();
    ctx.translate(12, (M.top + h - M.bottom) / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
    ctx.fillText("RS (fraction of layer more active)", 0, 0);
    ctx.restore();
    // Left-out rows first, so that the included ones stay visible on top.
    shown.sort((a, b) => (R.excluded[b] < 0) - (R.excluded[a] < 0));
    points = shown.map((r) => [r, px(selOf(r)), py(R.rs[r])]);
    for (const [r, x, y] of points) {
      ctx.fillStyle = colour(r);
      ctx.globalAlpha = 0.7;
      ctx.beginPath(); ctx.arc(x, y, 3, 0, 2 * Math.PI); ctx.fill();
    }
    ctx.globalAlpha = 1;
    $("scatter-caption").textContent =
      `${points.length.toLocaleString("en")} of the ${filtered.length.toLocaleString("en")} matching rows ` +
      "have both values. Click a point to open its unit.";
  }
  function pointAt(event) {
    const box = canvas.getBoundingClientRect();
    const x = ((event.clientX - box.left) * canvas.width) / box.width;
    const y = ((event.clientY - box.top) * canvas.height) / box.height;
    let best = null, bestD = 64; // within 8 canvas pixels
    for (const [r, px, py] of points) {
      const d = (px - x) ** 2 + (py - y) ** 2;
      if (d <= bestD) { best = r; bestD = d; }
    }
    return best;
  }
  canvas.addEventListener("click", (event) => {
    const r = pointAt(event);
    if (r !== null) openDetail(r, canvas);
  });
  canvas.addEventListener("mousemove", (event) => {
    const r = pointAt(event);
    $("scatter-hover").textContent = r === null ? "" :
      `${layerName(r)} unit ${unitOf(r)} ${methodOf(r).toUpperCase()}: RS ${fixed(R.rs[r])}, selectivity ${fixed(selOf(r))}`;
  });

  // ------------------------------------------------------------------ a unit's detail
  const dialog = $("unit-detail");
  let current = null, returnFocus = null;
  function cell(tr, text, header = false) {
    const c = document.createElement(header ? "th" : "td");
    c.textContent = text;
    tr.append(c);
  }
  function table(rows) {
    const t = document.createElement("table");
    for (const [k, v] of rows) { const tr = document.createElement("tr"); cell(tr, k, true); cell(tr, v); t.append(tr); }
    return t;
  }
  function className(c) { return D.classes && D.classes[c] !== undefined ? `${D.classes[c]} (${c})` : `class ${c}`; }
  function openDetail(r, from) {
    current = r;
    if (from) returnFocus = from;
    const u = R.unit[r];
    const info = D.layers[layerOf(r)];
    $("detail-title").textContent = `${info.name} ${targetName(r)} ${unitOf(r)}`;
    $("detail-layer").textContent =
      `layer depth ${info.depth ?? "?"}, read: ${info.read ?? "unknown"}` +
      (info.signed ? " (signed values: selectivity unbounded)" : "") + `, ${info.units ?? "?"} units`;
    $("detail-selectivity").replaceChildren(table([
      ["selectivity", fixed(U.sel[u])],
      ["dead (all class means 0)", U.dead[u] === null ? "–" : U.dead[u] ? "yes" : "no"],
      ["top class", U.top[u] === null || U.top[u] < 0 ? "–" : className(U.top[u])],
      ["images in the pass", U.images[u] ?? "–"],
      ["mean over all classes", sig(U.mean_all[u])],
    ]));
    const pairs = U.means[u] || [];
    const bars = document.createElement("ul");
    bars.className = "bars";
    const top = pairs.length ? Math.max(...pairs.filter((_, i) => i % 2 === 1), 1e-12) : 1;
    for (let i = 0; i < pairs.length; i += 2) {
      const li = document.createElement("li");
      const name = document.createElement("span"); name.textContent = className(pairs[i]);
      const bar = document.createElement("span"); bar.className = "bar";
      bar.style.width = `${Math.max(0, (100 * pairs[i + 1]) / top)}%`;
      const value = document.createElement("span"); value.textContent = sig(pairs[i + 1]);
      li.append(name, bar, value);
      bars.append(li);
    }
    const nClasses = D.classes ? D.classes.length : null;
    $("detail-means-title").textContent = pairs.length
      ? `Largest class means (${pairs.length / 2}${nClasses ? ` of ${nClasses}` : ""} classes; mean activation over the class's images)`
      : "No class means in the run";
    $("detail-means").replaceChildren(bars);
    $("detail-importance").replaceChildren(...importanceDetail(u, layerOf(r)));
    $("detail-exemplars").replaceChildren(...exemplarDetail(u, info.name, unitOf(r)));
    $("detail-bands").replaceChildren(...bandDetail(u, info.name, unitOf(r)));
    const figures = (rowsOfUnit.get(u) || []).map((m) => {
      const fig = document.createElement("figure");
      fig.dataset.method = methodOf(m);
      const img = document.createElement("img");
      img.alt = `${methodOf(m).toUpperCase()} image of ${info.name} unit ${unitOf(m)}`;
      if (thumb(m)) img.src = `data:image/${D.thumb.format};base64,${thumb(m)}`;
      const caption = document.createElement("figcaption");
      caption.textContent = methodOf(m).toUpperCase() + (m === r ? " (opened)" : "");
      fig.append(caption, img, table([
        ["RS", fixed(R.rs[m], 4)],
        ["rs_ties", fixed(R.ties[m], 4)],
        ["own activation", sig(R.act[m])],
        ["status", `${statusOf(m)}: ${D.statuses[statusOf(m)] ?? ""}`],
        ["in statistics", R.excluded[m] < 0 ? "yes" : `no: ${D.reasons[category(m)]}`],
        ["objective start → final", `${sig(R.obj0[m])} → ${sig(R.obj1[m])}`],
      ]));
      return fig;
    });
    $("detail-images").replaceChildren(...figures);
    const t = D.thumb;
    $("detail-note").textContent =
      `Images: ${t.side} px thumbnails` + (t.image_side && t.image_side > t.side ? ` of the ${t.image_side} px originals` : "") +
      `; full size in Python: repsub.open_run(RUN).image(${JSON.stringify(info.name)}, ${unitOf(r)}, ${JSON.stringify(methodOf(r))})`;
    const position = filtered.indexOf(r);
    $("detail-prev").disabled = position <= 0;
    $("detail-next").disabled = position < 0 || position >= filtered.length - 1;
    history.replaceState(null, "", `#unit=${encodeURIComponent(info.name)}/${unitOf(r)}/${methodOf(r)}`);
    if (!dialog.open) dialog.showModal();
  }
  function importanceDetail(u, layer) {
    if (!IMP) return [];
    const title = document.createElement("h4");
    title.textContent = "Importance by ablation (accuracy drop: baseline accuracy minus accuracy with the unit ablated)";
    const rows = [];
    for (const a of IMP.ablations) {
      const m = IMP.measured[a][layer] || {};
      const pairs = U.imp[a].classes[u] || [];
      const drops = [];
      for (let i = 0; i < pairs.length; i += 2) drops.push(`${className(pairs[i])} ${sig(pairs[i + 1])}`);
      rows.push([`${a}: accuracy drop`, sig(U.imp[a].drop[u])], [`${a}: loss increase`, sig(U.imp[a].loss[u])],
                [`${a}: baseline accuracy, images`, `${sig(m.baseline)}, ${m.images ?? "–"}`],
                [`${a}: largest class drops`, drops.join("; ") || "–"]);
    }
    return [title, table(rows)];
  }
  function exemplarDetail(u, layer, unit) {
    const parts = [];
    if (U.interp) {
      const title = document.createElement("h4");
      title.textContent = "Interpretability index (2AFC on the exemplars: 0.5 chance, 1 always right)";
      parts.push(title, table(Object.entries(U.interp).map(([kind, values]) => [kind, fixed(values[u])])));
    }
    if (!D.exemplars || !U.ex_top) return parts;
    for (const [side, positions] of [["top", U.ex_top[u]], ["bottom", U.ex_bottom[u]]]) {
      const title = document.createElement("h4");
      title.textContent = `${side === "top" ? "Top" : "Bottom"} exemplars (${side === "top" ? "highest" : "lowest"} activation, most extreme first)`;
      const strip = document.createElement("div");
      strip.className = "strip";
      strip.dataset.side = side;
      for (const p of positions || []) {
        const img = document.createElement("img");
        img.alt = `${side} exemplar of ${layer} unit ${unit}`;
        const data = exemplarThumb(p);
        if (data) img.src = `data:image/webp;base64,${data}`;
        strip.append(img);
      }
      if (!(positions || []).length) strip.textContent = "none";
      parts.push(title, strip);
    }
    const note = document.createElement("p");
    note.className = "small";
    note.textContent = `${D.exemplars.side} px thumbnails, the first ${D.exemplars.per_side} of each side; all of them ` +
      `in Python: repsub.open_run(RUN).exemplars(${JSON.stringify(layer)}, ${unit})`;
    parts.push(note);
    return parts;
  }
  function bandDetail(u, layer, unit) {
    const B = U.bands ? U.bands[u] : null;
    if (!B) return [];
    const title = document.createElement("h4");
    title.textContent = "Bands of activation (the top band first): images, their classes (× lift: share in the band / share in the data) and a sample";
    const rows = document.createElement("table");
    rows.className = "bands";
    for (let b = B.n.length - 1; b >= 0; b--) {
      const tr = document.createElement("tr");
      tr.dataset.band = b;
      const name = document.createElement("th");
      name.scope = "row";
      name.textContent = D.band_names[b];
      if (B.mid.includes(b)) {
        tr.className = "mid-range";
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "mid-range association";
        tag.title = "its most frequent class is not the top band's";
        name.append(" ", tag);
      }
      const top = B.top[b] || [];
      const classes = [];
      for (let i = 0; i < top.length; i += 3) classes.push(`${className(top[i])} ${top[i + 1]} (× ${sig(top[i + 2])})`);
      const cells = [`${B.n[b]} images`, `entropy ${fixed(B.h[b], 2)} bits`, classes.join("; ") || "–"].map((text) => {
        const td = document.createElement("td"); td.textContent = text; return td;
      });
      const strip = document.createElement("td");
      const images = document.createElement("div");
      images.className = "strip";
      for (const p of (U.band_strip && U.band_strip[u] && U.band_strip[u][b]) || []) {
        const img = document.createElement("img");
        img.alt = `${D.band_names[b]} band image of ${layer} unit ${unit}`;
        const data = exemplarThumb(p);
        if (data) img.src = `data:image/webp;base64,${data}`;
        images.append(img);
      }
      strip.append(images);
      tr.append(name, ...cells, strip);
      rows.append(tr);
    }
    const note = document.createElement("p");
    note.className = "small";
    note.textContent = `The first ${D.band_strip} sampled images of each band; all of it in Python: ` +
      `repsub.open_run(RUN).bands(${JSON.stringify(layer)}, ${unit})`;
    return [title, rows, note];
  }
  function step(delta) {
    const position = filtered.indexOf(current);
    if (position >= 0 && filtered[position + delta] !== undefined) openDetail(filtered[position + delta]);
  }
  $("detail-prev").addEventListener("click", () => step(-1));
  $("detail-next").addEventListener("click", () => step(1));
  $("detail-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    history.replaceState(null, "", location.pathname + location.search);
    if (returnFocus) returnFocus.focus();
  });
  function rowOf(layer, unit, method) {
    for (let r = 0; r < nRows; r++) {
      if (layerName(r) === layer && unitOf(r) === unit && methodOf(r) === method) return r;
    }
    return null;
  }

  // ------------------------------------------------------------------ wiring
  form.addEventListener("input", () => apply());
  form.addEventListener("submit", (event) => { event.preventDefault(); apply(); });
  $("f-reset").addEventListener("click", () => { form.reset(); apply(); });
  $("prev-page").addEventListener("click", () => { state.page--; render(); });
  $("next-page").addEventListener("click", () => { state.page++; render(); });
  for (const link of document.querySelectorAll("a[data-filter-layer]")) {
    link.addEventListener("click", () => {
      $("f-layer").value = link.dataset.filterLayer;
      $("f-method").value = link.dataset.filterMethod ?? "";
      if (D.bases) $("f-basis").value = "0"; // the statistics table is the units'
      apply();
    });
  }
  apply();
  const wanted = /^#unit=(.+)\/(\d+)\/(\w+)$/.exec(location.hash);
  if (wanted) {
    const r = rowOf(decodeURIComponent(wanted[1]), Number(wanted[2]), wanted[3]);
    if (r !== null) openDetail(r);
  }
  window.repsubExplorer = {
    rows: nRows,
    filtered: () => filtered.slice(),
    rowOf,
    describe: (r) => ({ layer: layerName(r), basis: basisName(r), unit: unitOf(r), method: methodOf(r), rs: R.rs[r], selectivity: selOf(r),
                        status: statusOf(r), category: category(r), importance: impOf(r), loss_increase: lossOf(r) }),
    scatterPoint(r) { // viewport coordinates of a row's point in the scatter, or null when it is not drawn
      const p = points.find((q) => q[0] === r);
      if (!p) return null;
      const box = canvas.getBoundingClientRect();
      return [box.left + (p[1] * box.width) / canvas.width, box.top + (p[2] * box.height) / canvas.height];
    },
    ready: rendering.then(() => { document.body.dataset.explorerReady = "1"; return true; }),
  };
})();
