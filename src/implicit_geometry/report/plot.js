/* implicit-geometry report plots: small dependency-free SVG line plots (hover, drag to zoom, double-click to
   reset), error bars, categorical axes and heatmaps. Every text goes through textContent (never innerHTML), so
   strings from configs cannot inject markup. Each plot sets data-drawn on its container to the number of marks
   it drew, which the browser tests read. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  var uid = 0;

  function svgEl(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function htmlEl(tag, cls, parent, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function finite(v) { return typeof v === "number" && isFinite(v); }
  function fmt(v) {
    if (!finite(v)) return "n/a";
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(3);
    return String(+v.toPrecision(5));
  }
  function niceTicks(lo, hi, n) {
    var span = hi - lo;
    if (!(span > 0)) return [lo];
    var step = Math.pow(10, Math.floor(Math.log10(span / n)));
    var err = span / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var out = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return out;
  }
  function logTicks(lo, hi) { // lo, hi in log10 units
    var out = [];
    var stride = Math.max(1, Math.ceil((Math.floor(hi) - Math.ceil(lo) + 1) / 8));
    for (var p = Math.ceil(lo); p <= Math.floor(hi); p += stride) out.push(p);
    return out.length >= 2 ? out : niceTicks(lo, hi, 4);
  }
  function tooltip(container) {
    var t = htmlEl("div", "ig-tip", container);
    t.style.display = "none";
    return t;
  }
  function showTip(tip, lines, px, py) {
    tip.textContent = "";
    lines.forEach(function (l) { htmlEl("div", null, tip, l); });
    tip.style.display = "block";
    tip.style.left = (px + 12) + "px";
    tip.style.top = (py + 12) + "px";
  }

  /* spec: {title, xlabel, ylabel, xlog, ylog, xcats, series: [{name, x, y, err}]} */
  function linePlot(container, spec) {
    container.textContent = "";
    var W = 470, H = 300, L = 66, R = 14, T = 26, B = 46;
    var xcats = spec.xcats || null;
    var tx = function (v) { return spec.xlog ? Math.log10(v) : v; };
    var ty = function (v) { return spec.ylog ? Math.log10(v) : v; };
    var okX = function (v) { return finite(v) && (!spec.xlog || v > 0); };
    var okY = function (v) { return finite(v) && (!spec.ylog || v > 0); };
    var series = (spec.series || []).map(function (s, i) {
      var pts = [];
      for (var j = 0; j < s.x.length; j++) {
        if (okX(s.x[j]) && okY(s.y[j])) pts.push({x: s.x[j], y: s.y[j], e: s.err && finite(s.err[j]) ? s.err[j] : null});
      }
      return {name: s.name, color: COLORS[i % COLORS.length], pts: pts, hidden: false};
    });
    var full = null, zoom = null;
    var intX = series.every(function (s) { return s.pts.every(function (p) { return Math.abs(p.x - Math.round(p.x)) < 1e-9; }); });
    function domains() {
      var xs = [], ys = [];
      series.forEach(function (s) {
        if (s.hidden) return;
        s.pts.forEach(function (p) {
          var X = tx(p.x);
          if (zoom && (X < zoom[0] || X > zoom[1])) return;
          xs.push(X);
          ys.push(ty(p.y));
          if (p.e !== null) {
            ys.push(ty(p.y + p.e));
            if (!spec.ylog || p.y - p.e > 0) ys.push(ty(p.y - p.e));
          }
        });
      });
      if (!xs.length) return null;
      var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
      var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
      if (zoom) { x0 = zoom[0]; x1 = zoom[1]; }
      if (xcats) { x0 = -0.5; x1 = xcats.length - 0.5; }
      if (x1 - x0 <= 0) { x0 -= 0.5; x1 += 0.5; } else if (!zoom && !xcats) { var px = (x1 - x0) * 0.04; x0 -= px; x1 += px; }
      if (y1 - y0 <= 0) { var d = Math.abs(y0) * 0.1 || 0.5; y0 -= d; y1 += d; }
      var py = (y1 - y0) * 0.05;
      return {x0: x0, x1: x1, y0: y0 - py, y1: y1 + py};
    }
    htmlEl("div", "ig-title", container, spec.title || "");
    var wrap = htmlEl("div", "ig-wrap", container);
    var svg = svgEl("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, "class": "ig-svg"}, wrap);
    var tip = tooltip(wrap);
    var legend = htmlEl("div", "ig-legend", container);
    var clipId = "igclip" + (uid++);

    function draw() {
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      var d = domains();
      var drawn = 0;
      if (!d) { container.setAttribute("data-drawn", "0"); return; }
      if (!full) full = d;
      var sx = function (X) { return L + (X - d.x0) / (d.x1 - d.x0) * (W - L - R); };
      var sy = function (Y) { return H - B - (Y - d.y0) / (d.y1 - d.y0) * (H - T - B); };
      var defs = svgEl("defs", {}, svg);
      var cp = svgEl("clipPath", {id: clipId}, defs);
      svgEl("rect", {x: L, y: T, width: W - L - R, height: H - T - B}, cp);
      svgEl("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "#fff", stroke: "#bbb"}, svg);
      // axes and grid
      var xt = xcats ? xcats.map(function (_, i) { return i; }) : (spec.xlog ? logTicks(d.x0, d.x1) : niceTicks(d.x0, d.x1, 5));
      if (intX && !spec.xlog && !xcats) { // integer settings (depth 1, 2, 3): no ticks in between
        xt = xt.filter(function (t) { return Math.abs(t - Math.round(t)) < 1e-9; });
        if (xt.length < 2) xt = niceTicks(Math.ceil(d.x0), Math.floor(d.x1), Math.max(1, Math.floor(d.x1) - Math.ceil(d.x0)));
      }
      xt.forEach(function (t) {
        if (t < d.x0 || t > d.x1) return;
        var X = sx(t);
        svgEl("line", {x1: X, x2: X, y1: T, y2: H - B, stroke: "#eee"}, svg);
        var lab = svgEl("text", {x: X, y: H - B + 15, "text-anchor": "middle", "class": "ig-tick"}, svg);
        lab.textContent = xcats ? String(xcats[t]) : (spec.xlog ? "1e" + t : fmt(t));
      });
      var yt = spec.ylog ? logTicks(d.y0, d.y1) : niceTicks(d.y0, d.y1, 5);
      yt.forEach(function (t) {
        if (t < d.y0 || t > d.y1) return;
        var Y = sy(t);
        svgEl("line", {x1: L, x2: W - R, y1: Y, y2: Y, stroke: "#eee"}, svg);
        var lab = svgEl("text", {x: L - 5, y: Y + 4, "text-anchor": "end", "class": "ig-tick"}, svg);
        lab.textContent = spec.ylog ? (Number.isInteger(t) ? "1e" + t : fmt(Math.pow(10, t))) : fmt(t);
      });
      var xl = svgEl("text", {x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle", "class": "ig-label"}, svg);
      xl.textContent = (spec.xlabel || "") + (spec.xlog ? " (log)" : "");
      var yl = svgEl("text", {x: 14, y: (T + H - B) / 2, "text-anchor": "middle", "class": "ig-label",
        transform: "rotate(-90 14 " + (T + H - B) / 2 + ")"}, svg);
      yl.textContent = (spec.ylabel || "") + (spec.ylog ? " (log)" : "");
      var g = svgEl("g", {"clip-path": "url(#" + clipId + ")"}, svg);
      var marks = [];
      series.forEach(function (s) {
        if (s.hidden) return;
        var path = "";
        var showDots = xcats || s.pts.length <= 40;
        s.pts.forEach(function (p, j) {
          var X = sx(tx(p.x)), Y = sy(ty(p.y));
          path += (j ? "L" : "M") + X.toFixed(2) + "," + Y.toFixed(2);
          if (p.e !== null && p.e > 0) {
            var lo = spec.ylog ? Math.max(p.y - p.e, p.y * 1e-3) : p.y - p.e;
            var Y0 = sy(ty(lo)), Y1 = sy(ty(p.y + p.e));
            svgEl("path", {d: "M" + X + "," + Y0 + "L" + X + "," + Y1 + "M" + (X - 4) + "," + Y0 + "L" + (X + 4) + "," + Y0 +
              "M" + (X - 4) + "," + Y1 + "L" + (X + 4) + "," + Y1, stroke: s.color, fill: "none", "class": "ig-err"}, g);
          }
          if (showDots) svgEl("circle", {cx: X, cy: Y, r: 3, fill: s.color, "class": "ig-dot"}, g);
          marks.push({X: X, Y: Y, p: p, s: s});
          drawn++;
        });
        if (s.pts.length > 1) svgEl("path", {d: path, stroke: s.color, fill: "none", "stroke-width": 1.6, "class": "ig-line"}, g);
      });
      container.setAttribute("data-drawn", String(drawn));
      // interaction: hover shows the nearest mark, drag selects an x range, double-click resets
      var hl = svgEl("circle", {r: 5, fill: "none", stroke: "#000", visibility: "hidden"}, svg);
      var sel = svgEl("rect", {y: T, height: H - T - B, fill: "rgba(30,120,200,0.15)", visibility: "hidden"}, svg);
      var overlay = svgEl("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "transparent", "class": "ig-overlay"}, svg);
      var start = null;
      function local(ev) {
        var r = svg.getBoundingClientRect();
        return {x: (ev.clientX - r.left) * W / r.width, y: (ev.clientY - r.top) * H / r.height, px: ev.clientX - r.left, py: ev.clientY - r.top};
      }
      overlay.addEventListener("mousemove", function (ev) {
        var m = local(ev);
        if (start !== null) {
          sel.setAttribute("x", Math.min(start, m.x));
          sel.setAttribute("width", Math.abs(m.x - start));
          sel.setAttribute("visibility", "visible");
        }
        var best = null, bd = 1e9;
        marks.forEach(function (k) {
          var dd = (k.X - m.x) * (k.X - m.x) + (k.Y - m.y) * (k.Y - m.y);
          if (dd < bd) { bd = dd; best = k; }
        });
        if (!best || bd > 900) { hl.setAttribute("visibility", "hidden"); tip.style.display = "none"; return; }
        hl.setAttribute("cx", best.X); hl.setAttribute("cy", best.Y); hl.setAttribute("visibility", "visible");
        var xs = xcats ? String(xcats[best.p.x]) : fmt(best.p.x);
        var lines = [best.s.name || "", (spec.xlabel || "x") + " = " + xs, (spec.ylabel || "y") + " = " + fmt(best.p.y) + (best.p.e !== null ? " \u00b1 " + fmt(best.p.e) : "")];
        showTip(tip, lines, m.px, m.py);
      });
      overlay.addEventListener("mouseleave", function () { hl.setAttribute("visibility", "hidden"); tip.style.display = "none"; });
      if (!xcats) {
        overlay.addEventListener("mousedown", function (ev) { start = local(ev).x; ev.preventDefault(); });
        overlay.addEventListener("mouseup", function (ev) {
          var end = local(ev).x;
          if (start !== null && Math.abs(end - start) > 5) {
            var a = d.x0 + (Math.min(start, end) - L) / (W - L - R) * (d.x1 - d.x0);
            var b = d.x0 + (Math.max(start, end) - L) / (W - L - R) * (d.x1 - d.x0);
            zoom = [a, b];
            start = null;
            draw();
            return;
          }
          start = null;
          sel.setAttribute("visibility", "hidden");
        });
        overlay.addEventListener("dblclick", function () { zoom = null; draw(); });
      }
    }
    // legend: click a name to hide or show its series
    if (series.length > 1) {
      series.forEach(function (s) {
        var item = htmlEl("span", "ig-leg", legend);
        var sw = htmlEl("span", "ig-swatch", item);
        sw.style.background = s.color;
        htmlEl("span", null, item, s.name || "");
        item.addEventListener("click", function () { s.hidden = !s.hidden; item.classList.toggle("ig-off", s.hidden); draw(); });
      });
    }
    draw();
  }

  function diverging(t) { // t in [-1, 1] -> blue, white, red
    t = Math.max(-1, Math.min(1, t));
    var a = Math.abs(t), c = t < 0 ? [33, 102, 172] : [178, 24, 43];
    var mix = function (i) { return Math.round(255 + (c[i] - 255) * a); };
    return "rgb(" + mix(0) + "," + mix(1) + "," + mix(2) + ")";
  }

  /* spec: {title, z: [[...]], vmax (optional)} */
  function heatmap(container, spec) {
    container.textContent = "";
    var z = spec.z || [], n = z.length, m = n ? z[0].length : 0;
    var S = 230, cell = S / Math.max(n, m, 1), W = m * cell + 82, H = n * cell + 10;
    var vmax = spec.vmax || 0;
    if (!vmax) z.forEach(function (r) { r.forEach(function (v) { if (finite(v)) vmax = Math.max(vmax, Math.abs(v)); }); });
    vmax = vmax || 1;
    htmlEl("div", "ig-title", container, spec.title || "");
    var wrap = htmlEl("div", "ig-wrap", container);
    var svg = svgEl("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, "class": "ig-svg"}, wrap);
    var tip = tooltip(wrap);
    var drawn = 0;
    for (var i = 0; i < n; i++) for (var j = 0; j < m; j++) {
      var v = z[i][j];
      svgEl("rect", {x: j * cell, y: i * cell + 5, width: cell + 0.3, height: cell + 0.3, fill: finite(v) ? diverging(v / vmax) : "#ccc", "class": "ig-cell"}, svg);
      drawn++;
    }
    // color bar
    var bx = m * cell + 18;
    for (var k = 0; k < 40; k++) svgEl("rect", {x: bx, y: 5 + k * (n * cell) / 40, width: 12, height: (n * cell) / 40 + 0.5, fill: diverging(1 - 2 * k / 39)}, svg);
    var top = svgEl("text", {x: bx + 15, y: 14, "class": "ig-tick"}, svg); top.textContent = fmt(vmax);
    var bot = svgEl("text", {x: bx + 15, y: n * cell + 5, "class": "ig-tick"}, svg); bot.textContent = fmt(-vmax);
    var overlay = svgEl("rect", {x: 0, y: 5, width: m * cell, height: n * cell, fill: "transparent"}, svg);
    overlay.addEventListener("mousemove", function (ev) {
      var r = svg.getBoundingClientRect();
      var x = (ev.clientX - r.left) * W / r.width, y = (ev.clientY - r.top) * H / r.height - 5;
      var jj = Math.floor(x / cell), ii = Math.floor(y / cell);
      if (ii < 0 || jj < 0 || ii >= n || jj >= m) { tip.style.display = "none"; return; }
      showTip(tip, ["[" + ii + ", " + jj + "] = " + fmt(z[ii][jj])], ev.clientX - r.left, ev.clientY - r.top);
    });
    overlay.addEventListener("mouseleave", function () { tip.style.display = "none"; });
    container.setAttribute("data-drawn", String(drawn));
  }

  /* spec: {param, xlog, xcats, metrics: {metric: [series...]}} drawn for the metric picked in #ig-metric */
  function sweepPlot(container, spec, metric) {
    linePlot(container, {title: metric + " against " + spec.param, xlabel: spec.param, ylabel: metric, xlog: spec.xlog,
      ylog: (spec.ylog || {})[metric] || false, xcats: spec.xcats, series: spec.metrics[metric] || []});
  }

  function sortableTable(table) {
    var heads = table.querySelectorAll("th");
    heads.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var asc = th.getAttribute("data-sort") !== "asc";
        heads.forEach(function (h) { h.removeAttribute("data-sort"); });
        th.setAttribute("data-sort", asc ? "asc" : "desc");
        rows.sort(function (a, b) {
          var x = a.cells[col].textContent, y = b.cells[col].textContent;
          var fx = parseFloat(x), fy = parseFloat(y);
          var r = (!isNaN(fx) && !isNaN(fy)) ? fx - fy : x.localeCompare(y);
          return asc ? r : -r;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  function main() {
    var specs = JSON.parse(document.getElementById("ig-data").textContent);
    var picker = document.getElementById("ig-metric");
    function drawSweeps() {
      document.querySelectorAll(".ig-plot[data-kind=sweep]").forEach(function (el) {
        sweepPlot(el, specs[el.getAttribute("data-spec")], picker.value);
      });
    }
    document.querySelectorAll(".ig-plot").forEach(function (el) {
      var spec = specs[el.getAttribute("data-spec")];
      var kind = el.getAttribute("data-kind");
      if (kind === "line") linePlot(el, spec);
      else if (kind === "heatmap") heatmap(el, spec);
    });
    if (picker) { picker.addEventListener("change", drawSweeps); drawSweeps(); }
    document.querySelectorAll("table.ig-sortable").forEach(sortableTable);
    document.body.setAttribute("data-rendered", "1");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main); else main();
})();
