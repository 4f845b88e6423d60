// Firebreak dashboard: refreshes the parts of a page marked `data-live="URL"` every two
// seconds from URL, which answers {"html": "..."} (HTML rendered and escaped by the server).
// Without this script the pages are complete; they are only not refreshed.
"use strict";
(function () {
  function refresh(el) {
    var url = el.getAttribute("data-live");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("status " + r.status); }
        return r.json();
      })
      .then(function (j) {
        if (typeof j.html === "string") { el.innerHTML = j.html; }
        el.removeAttribute("data-stale");
      })
      .catch(function () { el.setAttribute("data-stale", "true"); });
  }
  function start() {
    var live = document.querySelectorAll("[data-live]");
    if (live.length === 0) { return; }
    setInterval(function () {
      if (document.hidden) { return; }
      for (var i = 0; i < live.length; i++) { refresh(live[i]); }
    }, 2000);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
