/* hashbench leaderboard: sortable tables and a row filter (no dependencies, works from file://). */
(function () {
  "use strict";
  function sortKey(cell) {
    var v = cell.getAttribute("data-sort");
    return v === null ? cell.textContent.trim() : v;
  }
  function sortBy(table, th, col) {
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    var numeric = th.classList.contains("num");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = sortKey(a.cells[col]), y = sortKey(b.cells[col]);
      if (numeric) {
        x = parseFloat(x); y = parseFloat(y);
        if (isNaN(x)) { return isNaN(y) ? 0 : 1; }  /* blanks last in both directions */
        if (isNaN(y)) { return -1; }
        return dir * (x - y);
      }
      return dir * x.localeCompare(y, undefined, {numeric: true});
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = th.title || "click to sort";
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sortBy(table, th, col); } });
    });
  });
  document.querySelectorAll("input[data-filter]").forEach(function (input) {
    var id = input.getAttribute("data-filter");
    var table = document.getElementById(id);
    var count = document.querySelector("[data-count='" + id + "']");
    function apply() {
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0, rows = table.tBodies[0].rows;
      Array.prototype.forEach.call(rows, function (r) {
        var text = r.textContent.toLowerCase();
        r.hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
        shown += r.hidden ? 0 : 1;
      });
      if (count) { count.textContent = shown + " of " + rows.length + " rows"; }
    }
    input.addEventListener("input", apply);
    apply();
  });
  /* "copy command": the reproduce command onto the clipboard (a hidden textarea where the Clipboard API is
     missing or refused, as on file:// in some browsers) */
  function copyText(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var done = false;
    try { done = document.execCommand("copy"); } catch (e) { done = false; }
    document.body.removeChild(area);
    return done;
  }
  function copied(button, ok) {
    button.classList.toggle("copied", ok);
    button.textContent = ok ? "copied" : "select and copy";
    button.setAttribute("data-copied", ok ? "1" : "0");
  }
  document.querySelectorAll("button.copy").forEach(function (button) {
    button.addEventListener("click", function (e) {
      e.stopPropagation();
      var text = button.getAttribute("data-command");
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(function () { copied(button, true); },
                                                 function () { copied(button, copyText(text)); });
      } else {
        copied(button, copyText(text));
      }
    });
  });
}());
