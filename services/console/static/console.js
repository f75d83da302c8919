// The coordinator console's only script: live updates (server-sent events), countdowns, form rows.
// No inline scripts anywhere: the Content-Security-Policy allows this file only.
(function () {
  "use strict";

  var page = document.body.getAttribute("data-page");

  function setLive(state) {
    var indicator = document.getElementById("live");
    if (!indicator) return;
    indicator.setAttribute("data-state", state);
    indicator.textContent = indicator.getAttribute("data-" + state) || indicator.textContent;
  }

  // The stream starts after the last change the page was made with (data-seen-change), and the browser
  // resumes it after the last one received (Last-Event-ID) when it reconnects: the console first sends
  // what the page missed meanwhile, or "resync" when it no longer keeps it all (onChange(null)).
  function live(onChange) {
    var seen = document.body.getAttribute("data-seen-change") || "0";
    var source = new EventSource("/events?since=" + encodeURIComponent(seen));
    source.addEventListener("ready", function () { setLive("on"); });
    source.addEventListener("change", function (e) {
      var data = {};
      try { data = JSON.parse(e.data); } catch (err) { data = {}; }
      onChange(data);
    });
    source.addEventListener("resync", function () { onChange(null); });
    source.addEventListener("expired", function () {
      source.close();
      window.location.assign("/login?m=expired&next=" +
        encodeURIComponent(window.location.pathname + window.location.search));
    });
    source.onerror = function () {
      setLive("off");
      if (source.readyState === EventSource.CLOSED) {
        // Refused (signed out?) or the console restarted: reloading asks the server what to show.
        window.setTimeout(function () { window.location.reload(); }, 5000);
      }
    };
  }

  function queuePage() {
    var body = document.getElementById("alert-rows");
    if (!body) return;
    var pending = null;

    function known() {
      var ids = {};
      body.querySelectorAll("tr[data-alert-id]").forEach(function (row) {
        ids[row.getAttribute("data-alert-id")] = row.getAttribute("data-status");
      });
      return ids;
    }

    function refresh() {
      pending = null;
      var before = known();
      fetch(body.getAttribute("data-src"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.status === 401) { window.location.reload(); return null; }
          if (!response.ok) return null;
          var counts = response.headers.get("X-Lianfang-Counts");
          var page = response.headers.get("X-Lianfang-Page");
          return response.text().then(function (html) { return { html: html, counts: counts, page: page }; });
        })
        .then(function (result) {
          if (!result) return;
          body.innerHTML = result.html;
          body.querySelectorAll("tr[data-alert-id]").forEach(function (row) {
            var id = row.getAttribute("data-alert-id");
            if (before[id] !== row.getAttribute("data-status")) row.classList.add("fresh");
          });
          var status = document.getElementById("page-status");
          if (result.page && status) status.textContent = JSON.parse(result.page);
          if (result.counts) {
            var counts = JSON.parse(result.counts);
            document.querySelectorAll(".tab[data-status]").forEach(function (tab) {
              var n = counts[tab.getAttribute("data-status")];
              var badge = tab.querySelector(".count");
              if (badge && n !== undefined) badge.textContent = String(n);
            });
          }
        })
        .catch(function () { setLive("off"); });
    }

    live(function () {
      if (pending === null) pending = window.setTimeout(refresh, 250);
    });
    // Countdowns are written by the server: ask for the rows again every minute so they stay true.
    window.setInterval(function () {
      if (pending === null) pending = window.setTimeout(refresh, 0);
    }, 60000);
    // Filters apply with their button (or Enter), not on every change: choosing with the keyboard
    // must not leave the page under the user's hands.
  }

  function alertPage() {
    var section = document.getElementById("alert");
    if (!section) return;
    var alertId = section.getAttribute("data-alert-id");
    live(function (change) {
      if (change === null || change.alert_id === alertId) {  // null: what changed is unknown
        var notice = document.getElementById("changed");
        if (notice) notice.hidden = false;
      }
    });
    var add = document.getElementById("add-item");
    var items = document.getElementById("items");
    if (add && items) {
      add.addEventListener("click", function () {
        var rows = items.querySelectorAll(".item");
        if (!rows.length || rows.length >= 100) return;
        var copy = rows[rows.length - 1].cloneNode(true);
        copy.querySelectorAll("input, select").forEach(function (field) { field.value = ""; });
        items.appendChild(copy);
      });
    }
  }

  if (page === "queue") queuePage();
  if (page === "alert") alertPage();
})();
