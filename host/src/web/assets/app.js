// autodeploy web UI: confirmations and live deployment updates. Every page
// works without this script; it only saves a reload.
"use strict";

// Forms with data-confirm ask first; without JS they submit directly.
document.addEventListener("submit", function (e) {
  var form = e.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    e.preventDefault();
  }
});

(function live() {
  var deployments = document.querySelector("table#deployments");
  var projects = document.querySelector("table#projects");
  if (!deployments && !projects) return;
  if (!window.EventSource) return;
  var source = new EventSource("/events/stream");
  // One fetch at a time; an event that arrives during one asks for another
  // after it, so none is lost.
  var refreshing = false;
  var again = false;

  function setStatus(cell, status) {
    if (!cell) return;
    cell.textContent = status;
    cell.className = cell.className.replace(/\bstatus-\S+/g, "").trim() + " status-" + status;
  }

  // Takes the fresh rows from the server, as the page itself renders them:
  // new deployments appear, and a row's node, reason and log fill in.
  function refreshDeployments() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    again = false;
    fetch(window.location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("table#deployments tbody");
        var current = deployments.querySelector("tbody");
        if (!fresh || !current) return;
        // Logs a person opened stay open.
        var open = {};
        current.querySelectorAll("tr[data-deployment-id]").forEach(function (row) {
          var log = row.querySelector("details.log");
          if (log && log.open) open[row.getAttribute("data-deployment-id")] = true;
        });
        var copy = document.importNode(fresh, true);
        copy.querySelectorAll("tr[data-deployment-id]").forEach(function (row) {
          var log = row.querySelector("details.log");
          if (log && open[row.getAttribute("data-deployment-id")]) log.open = true;
        });
        current.replaceWith(copy);
        // The tracked state moves with the deployments.
        var commit = doc.getElementById("tracked-commit");
        var shown = document.getElementById("tracked-commit");
        if (commit && shown) shown.textContent = commit.textContent;
        var digests = doc.querySelector("table#image-digests tbody");
        var digestsShown = document.querySelector("table#image-digests tbody");
        if (digests && digestsShown) digestsShown.replaceWith(document.importNode(digests, true));
        if (copy.querySelector("tr[data-deployment-id]")) {
          var hint = document.getElementById("no-deployments");
          if (hint) hint.remove();
        }
      })
      .catch(function () {})
      .then(function () {
        refreshing = false;
        if (again) refreshDeployments();
      });
  }

  source.addEventListener("deployment", function (e) {
    var d;
    try { d = JSON.parse(e.data); } catch (err) { return; }
    if (deployments && String(d.project_id) === deployments.getAttribute("data-project-id")) {
      var row = deployments.querySelector('tr[data-deployment-id="' + d.deployment_id + '"]');
      if (row) setStatus(row.querySelector(".status"), d.status);
      refreshDeployments();
    }
    if (projects) {
      var line = projects.querySelector('tr[data-project-id="' + d.project_id + '"]');
      if (line) {
        setStatus(line.querySelector(".last-status"), d.status);
        var age = line.querySelector(".last-age");
        if (age) age.textContent = "just now";
      }
    }
  });
  // The daemon missed events for this page: reload to be exact again.
  source.addEventListener("reload", function () { window.location.reload(); });
  // Signed out (or the daemon stopped): stop asking.
  source.addEventListener("error", function () {
    if (source.readyState === EventSource.CLOSED) return;
  });
  source.addEventListener("end", function () { source.close(); });
})();
