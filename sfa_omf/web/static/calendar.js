// The calendar page's few behaviours: filters apply at once (a typed day once it is whole), a click or focus
// on a bar shows its details, and the "now" line follows the clock. Plain JavaScript, no library.
(function () {
  "use strict";
  var filters = document.getElementById("filters");
  if (filters) {
    filters.querySelectorAll("select").forEach(function (field) {
      field.addEventListener("change", function () { filters.submit(); });
    });
    // A date field changes at every digit typed (the year 2027 is 0002, 0020, 0202 on the way): once a key was
    // pressed in it, it is sent on Enter, or when it loses focus, never while typed. A day picked with the mouse
    // (the picker's popup: the field keeps the focus) is sent at once. Either way only a new day the server takes
    // (the field's min and max).
    var showPressed = false;
    filters.querySelectorAll("button[type=submit]").forEach(function (button) {
      button.addEventListener("pointerdown", function () { showPressed = true; });
    });
    filters.querySelectorAll("input[type=date]").forEach(function (field) {
      var shown = field.value;
      var typing = false;
      function send() {
        if (field.value && field.value !== shown && field.checkValidity()) { filters.submit(); }
      }
      field.addEventListener("keydown", function (event) {
        if (event.key !== "Enter") { typing = true; return; }
        event.preventDefault();
        if (field.checkValidity()) { send(); } else { field.reportValidity(); }
      });
      // A click on the field (its picker icon) starts a pick with the mouse: its change is a whole day.
      field.addEventListener("pointerdown", function () { typing = false; });
      field.addEventListener("change", function () { if (!typing) { send(); } });
      // Left with a press on the Show button, the button sends the form: sent here too, the second submission
      // cancelled the first, now and then as it was on its way. (Left with Tab, it is sent here.)
      field.addEventListener("blur", function () {
        typing = false;
        if (!showPressed) { send(); }
      });
    });
  }
  // One delegated listener for all bars (a week of 1 000 nodes has thousands); each lease's details are in one
  // JSON block, not repeated on every bar of the lease.
  var details = document.getElementById("details");
  var known = document.getElementById("lease-details");
  var leases = known ? JSON.parse(known.textContent) : {};
  function show(bar) {
    if (!details) { return; }
    document.querySelectorAll(".bar.selected").forEach(function (b) { b.classList.remove("selected"); });
    bar.classList.add("selected");
    var list = details.querySelector("dl");
    list.textContent = "";
    (leases[bar.dataset.lease] || []).forEach(function (pair) {
      var term = document.createElement("dt");
      term.textContent = pair[0];
      var value = document.createElement("dd");
      value.textContent = pair[1];
      list.appendChild(term);
      list.appendChild(value);
    });
    details.hidden = false;
  }
  var chart = document.getElementById("gantt");
  if (chart) {
    ["click", "mouseover"].forEach(function (kind) {
      chart.addEventListener(kind, function (event) {
        var bar = event.target.closest ? event.target.closest(".bar") : null;
        if (bar) { show(bar); }
      });
    });
  }
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
