// The dashboard's few scripts: select rows and act on them in bulk (a dry run first), and follow the live log.
// Everything works without them except those two; text from senders goes in with textContent, never as HTML.
"use strict";

function picked(scope) {
  return Array.from(scope.querySelectorAll("input.pick:checked")).map((box) => ({
    relay: box.dataset.relay,
    account: box.dataset.account,
  }));
}

function countPicked(scope) {
  const shown = scope.querySelector(".picked");
  if (shown) shown.textContent = String(picked(scope).length);
}

async function bulk(form, scope, dryRun) {
  const result = form.querySelector(".bulk-result");
  const confirm = form.querySelector(".bulk-confirm");
  const accounts = picked(scope);
  result.textContent = "";
  if (!accounts.length) {
    result.textContent = "Select some rows first.";
    return;
  }
  const body = {
    action: form.elements.action.value,
    reason: form.elements.reason.value,
    accounts: accounts,
    dry_run: dryRun,
  };
  result.textContent = dryRun ? "Working out what would change..." : "Working...";
  let answer;
  try {
    const response = await fetch("/dashboard/api/bulk", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(body),
    });
    answer = await response.json();
    if (!response.ok) {
      result.textContent = "Refused: " + (answer.detail || response.status);
      return;
    }
  } catch (error) {
    result.textContent = "The dashboard did not answer: " + error;
    return;
  }
  result.textContent = "";
  const heading = document.createElement("p");
  heading.className = "bulk-summary";
  heading.textContent = (dryRun ? "Dry run of " : "Done: ") + body.action + " on " + accounts.length + " account(s).";
  result.appendChild(heading);
  const list = document.createElement("ul");
  for (const relay of answer.relays) {
    const item = document.createElement("li");
    item.textContent = relay.relay + ": " + relay.summary + (relay.ok ? "" : " (" + relay.status + ")");
    const details = document.createElement("details");
    const label = document.createElement("summary");
    label.textContent = "what the service answered";
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(relay.result, null, 2);
    details.append(label, pre);
    item.appendChild(details);
    list.appendChild(item);
  }
  result.appendChild(list);
  if (dryRun && answer.ok) {
    confirm.hidden = false;
    confirm.textContent = "Confirm: " + body.action + " " + accounts.length + " account(s)";
  } else {
    confirm.hidden = true;
    if (!dryRun) {
      const again = document.createElement("a");
      again.href = window.location.href;
      again.textContent = "Refresh the list";
      result.appendChild(again);
    }
  }
}

function setUpBulk(scope) {
  const form = scope.querySelector("form.bulk");
  if (!form) return;
  scope.addEventListener("change", (event) => {
    if (event.target.matches("input.pick-all")) {
      for (const box of scope.querySelectorAll("input.pick")) box.checked = event.target.checked;
    }
    if (event.target.matches("input.pick, input.pick-all")) {
      form.querySelector(".bulk-confirm").hidden = true; // a new selection needs a new dry run
      countPicked(scope);
    }
  });
  form.elements.action.addEventListener("change", () => {
    form.querySelector(".bulk-confirm").hidden = true;
  });
  form.querySelector(".bulk-preview").addEventListener("click", () => bulk(form, scope, true));
  form.querySelector(".bulk-confirm").addEventListener("click", () => bulk(form, scope, false));
  countPicked(scope);
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (text !== null && text !== undefined) td.textContent = String(text);
  row.appendChild(td);
  return td;
}

function link(parent, href, text, className) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  if (className) a.className = className;
  parent.appendChild(a);
  parent.appendChild(document.createTextNode(" "));
  return a;
}

function decisionRow(d) {
  const row = document.createElement("tr");
  row.dataset.id = String(d.id);
  row.className = "new";
  cell(row, d.when);
  link(cell(row, null), d.account_url, d.relay + "/" + d.account);
  const action = document.createElement("span");
  action.className = "action " + d.action;
  action.textContent = d.action;
  cell(row, null).appendChild(action);
  cell(row, d.spam_probability === null ? "" : d.spam_probability);
  cell(row, d.account_risk);
  const why = cell(row, null);
  for (const reason of d.reasons) {
    const span = document.createElement("span");
    span.className = "why";
    span.title = reason.feature;
    span.textContent = reason.meaning;
    why.appendChild(span);
  }
  cell(row, d.client_ip || "");
  cell(row, d.subject || "");
  const acts = cell(row, null, "row-actions");
  link(acts, d.label_spam, "spam", "act");
  link(acts, d.label_ham, "not spam", "act");
  link(acts, d.lock, "lock", "act danger");
  return row;
}

function follow(table) {
  const body = table.tBodies[0];
  const follow = document.getElementById("follow");
  let newest = Number(table.dataset.newest || 0);
  async function poll() {
    if (follow && !follow.checked) return;
    try {
      const url = table.dataset.poll + (table.dataset.poll.includes("?") ? "&" : "?") + "after=" + newest;
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) return;
      const answer = await response.json();
      if (!answer.rows.length) return;
      const empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      for (const d of answer.rows.slice().reverse()) body.insertBefore(decisionRow(d), body.firstChild);
      newest = answer.newest;
      table.dataset.newest = String(newest);
      while (body.rows.length > 500) body.deleteRow(-1);
    } catch (error) {
      // the next poll tries again
    }
  }
  window.setInterval(poll, 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const scope of document.querySelectorAll(".selectable")) setUpBulk(scope);
  const table = document.querySelector("table#decisions[data-poll]");
  if (table) follow(table);
});
