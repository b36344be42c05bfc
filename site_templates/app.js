/* ralph-monitor: show times in the viewer's zone, poll api/status.json (the browser sends
   If-None-Match / If-Modified-Since, nginx answers 304 while it is unchanged), update the
   numbers marked data-live, and say so in red when the monitor stopped updating. */
(function () {
  "use strict";
  var doc = document.documentElement;
  var root = doc.getAttribute("data-root") || "";
  var pollMs = (Number(doc.getAttribute("data-poll-s")) || 15) * 1000;
  var staleMs = (Number(doc.getAttribute("data-stale-s")) || 180) * 1000;
  var generated = Date.parse(doc.getAttribute("data-generated") || "") || null;
  var main = document.querySelector("main");
  var digest = main ? main.getAttribute("data-digest") : null;
  var badge = document.getElementById("updated");
  var stale = document.getElementById("stale");
  var changed = document.getElementById("changed");
  var offline = false;

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function format(d) {
    var now = new Date();
    var hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    if (d.toDateString() === now.toDateString()) { return "today " + hm; }
    var day = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
    return day + " " + hm;
  }
  function ago(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) { return s + " s ago"; }
    if (s < 5400) { return Math.round(s / 60) + " min ago"; }
    if (s < 172800) { return Math.round(s / 3600) + " h ago"; }
    return Math.round(s / 86400) + " days ago";
  }
  function localize() {
    var zone = "";
    try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
    var times = document.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var d = new Date(times[i].getAttribute("datetime"));
      if (isNaN(d.getTime())) { continue; }
      times[i].title = times[i].textContent + (zone ? " (shown in " + zone + ")" : "");
      times[i].textContent = format(d);
    }
  }
  function tick() {
    if (!badge || !generated) { return; }
    var age = Date.now() - generated;
    var old = age > staleMs;
    badge.textContent = "updated " + ago(age) + (offline ? " · dashboard server unreachable" : "");
    badge.className = "updated " + (old ? "old" : "fresh");
    if (stale) {
      stale.hidden = !old;
      if (old) {
        stale.textContent = "Monitor not updating since " + format(new Date(generated)) + " (" + ago(age) +
          "): these numbers may be out of date. Check the ralph-monitor service.";
      }
    }
  }
  function apply(snapshot) {
    if (!snapshot || typeof snapshot !== "object") { return; }
    var t = Date.parse(snapshot.generated_at);
    if (t) { generated = t; }
    var live = snapshot.live || {};
    var els = document.querySelectorAll("[data-live]");
    for (var i = 0; i < els.length; i++) {
      var key = els[i].getAttribute("data-live");
      if (Object.prototype.hasOwnProperty.call(live, key)) { els[i].textContent = String(live[key]); }
    }
    if (changed && digest && live.digest && live.digest !== digest) { changed.hidden = false; }
  }
  function poll() {
    if (!window.fetch) { return; }
    window.fetch(root + "api/status.json", { cache: "no-cache", credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (snapshot) { offline = false; apply(snapshot); tick(); })
      .catch(function () { offline = true; tick(); });
  }
  if (changed) { changed.href = window.location.pathname.split("/").pop() || "index.html"; }
  localize();
  tick();
  poll();
  window.setInterval(poll, pollMs);
  window.setInterval(tick, 5000);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { poll(); } });
}());
