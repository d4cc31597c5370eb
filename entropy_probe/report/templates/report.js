/* entropy-probe report: table sorting and filtering, plot tooltips. No dependencies.
   Untrusted text (layer names) is only ever assigned with textContent, never as HTML. */
(function () {
  "use strict";
  var doc = document;
  var table = doc.getElementById("layer-table");
  var rows = table ? Array.prototype.slice.call(table.tBodies[0].rows) : [];

  /* ---- sorting: click a header; numbers sort by data-v, missing values last ---- */
  function cellKey(row, col, numeric) {
    var cell = row.cells[col];
    if (!cell) { return numeric ? NaN : ""; }
    var v = cell.getAttribute("data-v");
    if (numeric) { return v === null || v === "" ? NaN : parseFloat(v); }
    return (v === null ? cell.textContent : v).trim().toLowerCase();
  }
  function sortTable(th, col) {
    var numeric = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    Array.prototype.forEach.call(th.parentNode.cells, function (other) {
      other.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var sorted = rows.slice().sort(function (a, b) {
      var x = cellKey(a, col, numeric), y = cellKey(b, col, numeric);
      if (numeric) {
        var xm = isNaN(x), ym = isNaN(y);
        if (xm || ym) { return xm === ym ? 0 : (xm ? 1 : -1); }
        return x === y ? 0 : (x < y ? -dir : dir);
      }
      return x.localeCompare(y, undefined, { numeric: true }) * dir;
    });
    var body = table.tBodies[0];
    sorted.forEach(function (row) { body.appendChild(row); });
  }
  if (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      var button = th.querySelector("button");
      if (button) { button.addEventListener("click", function () { sortTable(th, col); }); }
    });
  }

  /* ---- filtering by name text, status and kind ---- */
  var text = doc.getElementById("filter-text");
  var status = doc.getElementById("filter-status");
  var kind = doc.getElementById("filter-kind");
  var count = doc.getElementById("filter-count");
  function applyFilter() {
    var q = text ? text.value.trim().toLowerCase() : "";
    var s = status ? status.value : "";
    var k = kind ? kind.value : "";
    var shown = 0;
    rows.forEach(function (row) {
      var name = row.cells[1] ? row.cells[1].textContent.toLowerCase() : "";
      var ok = (!q || name.indexOf(q) !== -1) &&
        (!s || row.getAttribute("data-status") === s) &&
        (!k || row.getAttribute("data-kind") === k);
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    if (count) { count.textContent = "showing " + shown + " of " + rows.length + " layers"; }
  }
  [text, status, kind].forEach(function (el) {
    if (el) { el.addEventListener("input", applyFilter); el.addEventListener("change", applyFilter); }
  });
  applyFilter();

  /* ---- plot tooltips: the <title> text moves to a styled tooltip ---- */
  var tip = doc.createElement("div");
  tip.className = "tooltip";
  tip.setAttribute("role", "tooltip");
  doc.body.appendChild(tip);
  var marks = doc.querySelectorAll("svg.chart .mk, svg.chart .offscale");
  Array.prototype.forEach.call(marks, function (mark) {
    var title = mark.querySelector("title");
    if (!title) { return; }
    var label = title.textContent;
    mark.removeChild(title);
    mark.setAttribute("aria-label", label);
    mark.addEventListener("mouseenter", function () {
      tip.textContent = label;
      tip.style.display = "block";
    });
    mark.addEventListener("mousemove", function (event) {
      var x = event.clientX + 14, y = event.clientY + 14;
      var w = tip.offsetWidth, h = tip.offsetHeight;
      if (x + w > window.innerWidth - 8) { x = event.clientX - w - 14; }
      if (y + h > window.innerHeight - 8) { y = event.clientY - h - 14; }
      tip.style.left = x + "px";
      tip.style.top = y + "px";
    });
    mark.addEventListener("mouseleave", function () { tip.style.display = "none"; });
    mark.addEventListener("click", function () {
      var row = doc.getElementById(mark.getAttribute("data-ref") || "");
      if (!row) { return; }
      if (row.hidden) {
        if (text) { text.value = ""; }
        if (status) { status.value = ""; }
        if (kind) { kind.value = ""; }
        applyFilter();
      }
      row.scrollIntoView({ block: "center", behavior: "smooth" });
      row.classList.remove("flash");
      void row.offsetWidth;
      row.classList.add("flash");
    });
  });

  /* ---- download the embedded profile data ---- */
  var download = doc.getElementById("download-json");
  var data = doc.getElementById("report-data");
  if (download && data) {
    download.addEventListener("click", function () {
      var blob = new Blob([JSON.stringify(JSON.parse(data.textContent), null, 2) + "\n"],
        { type: "application/json" });
      var link = doc.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = "entropy_profile.json";
      doc.body.appendChild(link);
      link.click();
      doc.body.removeChild(link);
      setTimeout(function () { URL.revokeObjectURL(link.href); }, 1000);
    });
  }

  doc.documentElement.setAttribute("data-js", "ready");
}());
