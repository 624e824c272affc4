// The calendar page's few behaviours: filters apply at once, a click or focus on a bar shows its details,
// and the "now" line follows the clock. Plain JavaScript, no library.
(function () {
  "use strict";
  var filters = document.getElementById("filters");
  if (filters) {
    filters.querySelectorAll("select, input").forEach(function (field) {
      field.addEventListener("change", function () { filters.submit(); });
    });
  }
  var details = document.getElementById("details");
  function show(bar) {
    if (!details) { return; }
    document.querySelectorAll(".bar.selected").forEach(function (b) { b.classList.remove("selected"); });
    bar.classList.add("selected");
    var list = details.querySelector("dl");
    list.textContent = "";
    JSON.parse(bar.dataset.details).forEach(function (pair) {
      var term = document.createElement("dt");
      term.textContent = pair[0];
      var value = document.createElement("dd");
      value.textContent = pair[1];
      list.appendChild(term);
      list.appendChild(value);
    });
    details.hidden = false;
  }
  document.querySelectorAll("#gantt .bar").forEach(function (bar) {
    bar.addEventListener("click", function () { show(bar); });
    bar.addEventListener("focus", function () { show(bar); });
  });
  var gantt = document.getElementById("gantt");
  var line = document.getElementById("now-line");
  function moveNow() {
    if (!gantt || !line) { return; }
    var start = Date.parse(gantt.dataset.windowStart);
    var end = Date.parse(gantt.dataset.windowEnd);
    var now = Date.now();
    if (now < start || now >= end) { line.hidden = true; return; }
    line.hidden = false;
    line.style.left = ((now - start) / (end - start) * 100) + "%";
  }
  setInterval(moveNow, 30000);
})();
