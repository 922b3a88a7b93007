// Live charts: an element with data-events="URL" gets its chart re-rendered by the server as the
// run's metrics.jsonl grows (server-sent events; the page reads the same without this script).
document.addEventListener("DOMContentLoaded", () => {
  for (const box of document.querySelectorAll("[data-events]")) {
    if (!window.EventSource) return;
    const es = new EventSource(box.dataset.events);
    es.addEventListener("curve", (e) => { box.innerHTML = e.data; });
    es.addEventListener("summary", (e) => {
      const s = document.getElementById("summary");
      if (s) s.textContent = e.data;
    });
    es.onerror = () => {
      const s = document.getElementById("live");
      if (s) s.textContent = "live updates paused (reconnecting)";
    };
    es.onopen = () => {
      const s = document.getElementById("live");
      if (s) s.textContent = "live";
    };
  }
});
