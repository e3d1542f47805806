// The console's little JavaScript: live sync progress over server-sent events, and "Back" links.
// Values are written with textContent only: nothing from the server is ever parsed as HTML.
"use strict";

function cell(tag, text, cls) {
  const element = document.createElement(tag);
  if (text !== undefined && text !== null) element.textContent = String(text);
  if (cls) element.className = cls;
  return element;
}

function lines(tracks, format) {
  const box = document.createElement("td");
  tracks.forEach((track) => box.appendChild(cell("div", format(track))));
  return box;
}

function progressRow(run) {
  const row = document.createElement("tr");
  row.id = "run-" + run.id;
  row.dataset.run = run.id;
  const link = cell("a", run.id);
  link.href = "/syncs/" + run.id;
  const first = document.createElement("td");
  first.appendChild(link);
  row.appendChild(first);
  row.appendChild(cell("td", run.kind));
  row.appendChild(cell("td", run.target));
  const status = document.createElement("td");
  status.dataset.field = "status";
  status.appendChild(cell("span", run.status, "status status-" + run.status));
  row.appendChild(status);
  const fraction = lines(run.tracks, (t) => t.name + " " + t.fraction);
  fraction.dataset.field = "fraction";
  row.appendChild(fraction);
  const bars = document.createElement("td");
  bars.dataset.field = "bar";
  run.tracks.forEach((t) => {
    const bar = document.createElement("progress");
    bar.max = t.total || 1;
    bar.value = t.total ? t.done : 0;
    bars.appendChild(bar);
  });
  row.appendChild(bars);
  const rate = lines(run.tracks, (t) => (t.rate ? t.rate.toFixed(1) : "-") + " " + t.name + "/s");
  rate.dataset.field = "rate";
  row.appendChild(rate);
  for (const [field, value] of [["eta", run.eta], ["api_calls", run.api_calls], ["retries", run.retries],
                                ["errors", run.errors], ["elapsed", run.elapsed], ["error", (run.error || "").slice(0, 200)]]) {
    const td = cell("td", value, field === "error" ? "error-text" : "");
    td.dataset.field = field;
    row.appendChild(td);
  }
  return row;
}

function live(table) {
  const body = table.querySelector("tbody");
  const source = new EventSource(table.dataset.stream);
  source.addEventListener("progress", (event) => {
    const runs = JSON.parse(event.data);
    if (table.dataset.live === "one") {
      if (runs.length) body.replaceChildren(progressRow(runs[0]));
      return;
    }
    body.replaceChildren(...runs.map(progressRow));
    const none = document.getElementById("none-running");
    if (none) none.hidden = runs.length > 0;
  });
  source.addEventListener("end", (event) => {
    source.close();
    table.dataset.ended = "true";
    // The session ended (logout elsewhere, expiry, user disabled): the reload goes to the login page.
    if (JSON.parse(event.data || "{}").session === "ended") window.location.reload();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table[data-stream]").forEach(live);
  document.querySelectorAll("a[data-back]").forEach((link) => link.addEventListener("click", (event) => {
    if (history.length > 1) { event.preventDefault(); history.back(); }
  }));
});
