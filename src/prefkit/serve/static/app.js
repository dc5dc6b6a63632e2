// prefkit annotation pages: keyboard shortcuts and time per label. No inline scripts (the
// Content-Security-Policy forbids them); everything works without this file too.
(function () {
  "use strict";
  var started = Date.now();
  function typing(el) {
    return el && (el.tagName === "TEXTAREA" || (el.tagName === "INPUT" && el.type !== "radio" &&
      el.type !== "checkbox") || el.isContentEditable);
  }
  document.addEventListener("submit", function (event) {
    var seconds = document.getElementById("seconds");
    if (seconds && event.target.id === "label-form") {
      seconds.value = ((Date.now() - started) / 1000).toFixed(2);
    }
  }, true);
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.metaKey) { return; }
    var form = document.getElementById("label-form");
    if (event.key === "Enter" && event.ctrlKey && form) {
      event.preventDefault();
      form.requestSubmit();
      return;
    }
    if (event.ctrlKey) { return; }
    if (typing(document.activeElement)) {
      if (event.key === "Escape") { document.activeElement.blur(); }
      return;
    }
    var key = event.key;
    if (key === "g") {
      var guide = document.getElementById("guidelines");
      if (guide) { guide.open = !guide.open; event.preventDefault(); }
      return;
    }
    if (key === "Enter" && document.activeElement && document.activeElement.tagName === "SELECT" && form) {
      event.preventDefault();
      form.requestSubmit();
      return;
    }
    if (!/^([a-z0-9]|Enter)$/.test(key)) { return; }
    var target = document.querySelector('[data-key="' + key + '"]');
    if (!target) { return; }
    event.preventDefault();
    if (target.tagName === "TEXTAREA") { target.focus(); return; }
    if (target.type === "radio") { target.checked = true; return; }
    if (target.form && target.form.id === "label-form" && target.type === "submit") {
      target.form.requestSubmit(target);
      return;
    }
    target.click();
  });
}());
