// Ferry console: progressive enhancement only; every page works without it.
// Elements with data-refresh="URL" get their content re-fetched every
// data-every milliseconds (the overview's table, a running job, which stops
// once it shows data-finished=true); a "select all" checkbox
// toggles the selection checkboxes of its form.
(function () {
  "use strict";
  function refresh(el) {
    var every = parseInt(el.getAttribute("data-every") || "5000", 10);
    var url = el.getAttribute("data-refresh");
    function tick() {
      if (document.hidden) { setTimeout(tick, every); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (r.redirected || !r.ok) { throw new Error("refresh answered " + r.status); }
          return r.text();
        })
        .then(function (html) { el.innerHTML = html; el.removeAttribute("data-stale"); })
        .catch(function () { el.setAttribute("data-stale", "true"); })
        .then(function () {
          // A finished job's page stops refreshing.
          if (el.hasAttribute("data-until-done") && el.querySelector("[data-finished=true]")) { return; }
          setTimeout(tick, every);
        });
    }
    setTimeout(tick, every);
  }
  function selectAll(box) {
    box.addEventListener("change", function () {
      var form = box.form;
      if (!form) { return; }
      form.querySelectorAll("input[type=checkbox][name=id]").forEach(function (c) {
        c.checked = box.checked;
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
    document.querySelectorAll("input[data-select-all]").forEach(selectAll);
  });
})();
