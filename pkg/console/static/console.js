// sindri console: copy buttons, and live pages. Everything works without
// this file; it only saves reloads and typing.
(function () {
  "use strict";

  // Copy buttons: data-copy names the input whose value they copy.
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest("button[data-copy]");
    if (!button) return;
    var input = document.getElementById(button.getAttribute("data-copy"));
    if (!input) return;
    var status = document.getElementById("copy-status");
    var label = (input.labels && input.labels[0]) ? input.labels[0].textContent : "the text";
    var done = function (ok) {
      button.textContent = ok ? "Copied" : "Copy";
      button.setAttribute("data-copied", ok ? "1" : "0");
      if (status) status.textContent = ok ? "Copied " + label + " to the clipboard." : "Select the text and copy it with the keyboard.";
      if (ok) setTimeout(function () { button.textContent = "Copy"; }, 3000);
    };
    input.select();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(function () { done(true); }, function () { done(fallback()); });
    } else {
      done(fallback());
    }
  });

  function fallback() {
    try { return document.execCommand("copy"); } catch (e) { return false; }
  }

  // Live pages: while <main> says data-live, fetch the page again every
  // second and put its new content in place; stop once it is no longer
  // live. Focus and the text a person has selected are left alone.
  var busy = false;
  function refresh() {
    var main = document.getElementById("main");
    if (!main || !main.hasAttribute("data-live") || busy) return;
    if (main.contains(document.activeElement) && document.activeElement.tagName === "SELECT") return;
    busy = true;
    fetch(location.href, { headers: { "X-Sindri-Live": "1" }, credentials: "same-origin", cache: "no-store" })
      .then(function (resp) {
        if (!resp.ok || resp.redirected) throw new Error("status " + resp.status);
        return resp.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.getElementById("main");
        if (!next) return;
        // Keep the keyboard's place: focus goes back to the element of
        // the same id in the new content.
        var focused = main.contains(document.activeElement) ? document.activeElement.id : "";
        main.innerHTML = next.innerHTML;
        if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
        if (next.hasAttribute("data-live")) main.setAttribute("data-live", "1");
        else main.removeAttribute("data-live");
        main.setAttribute("data-refreshed", String(Number(main.getAttribute("data-refreshed") || 0) + 1));
      })
      .catch(function () { /* try again on the next tick */ })
      .then(function () { busy = false; });
  }
  setInterval(refresh, 1000);
})();
