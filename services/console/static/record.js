// The joint-meeting record's print button (no inline script: the Content-Security-Policy forbids it).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var button = document.getElementById("print");
  if (button) {
    button.addEventListener("click", function () { window.print(); });
  }
});
