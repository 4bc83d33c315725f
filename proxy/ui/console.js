// The rerank-proxy console: plain DOM, no framework, nothing loaded from anywhere but the proxy.
// Every value from the cluster goes into the page as text (textContent), never as markup.

const API = "/_rerank_proxy/ui/api";
const SVG = "http://www.w3.org/2000/svg";

const $ = (selector) => document.querySelector(selector);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function svgElement(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

async function api(path, init) {
  const response = await fetch(path, { headers: { accept: "application/json" }, ...init });
  let document = null;
  try {
    document = await response.json();
  } catch {
    document = null;
  }
  if (!response.ok) {
    const reason = document?.error?.reason ?? document?.error ?? `HTTP ${response.status}`;
    const error = new Error(typeof reason === "string" ? reason : JSON.stringify(reason));
    error.document = document;
    throw error;
  }
  return document;
}

function number(value, digits) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
}

function say(selector, text, isError = false) {
  const node = $(selector);
  node.textContent = text;
  node.classList.toggle("error", isError);
}

// ---- tabs ------------------------------------------------------------------------------------------------------

function showTab(name) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const selected = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(`#${tab.getAttribute("aria-controls")}`).hidden = !selected;
  }
  if (name === "results") loadResults();
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => showTab(tab.id.slice("tab-".length)));
    tab.addEventListener("keydown", (event) => {
      if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
      const next = tabs[(tabs.indexOf(tab) + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
      next.focus();
      showTab(next.id.slice("tab-".length));
    });
  }
}

// ---- compare ---------------------------------------------------------------------------------------------------

let catalogue = null;

function describeTarget(entry) {
  const how = entry.reranked ? `reranked (${entry.rule})` : `not reranked (${entry.rule})`;
  return entry.indices ? `alias of ${entry.indices.join(", ")}; ${how}` : `${entry.docs ?? "?"} docs; ${how}`;
}

async function loadIndices() {
  try {
    catalogue = await api(`${API}/indices`);
  } catch (error) {
    say("#compare-message", `Could not list the cluster's indices: ${error.message}`, true);
    return;
  }
  const select = $("#index");
  select.replaceChildren();
  const groups = [["Indices", catalogue.indices], ["Aliases", catalogue.aliases]];
  for (const [label, entries] of groups) {
    if (!entries.length) continue;
    const group = element("optgroup", { label });
    for (const entry of entries) group.append(element("option", { value: entry.name }, entry.name));
    select.append(group);
  }
  const firstReranked = catalogue.indices.find((entry) => entry.reranked) ?? catalogue.aliases.find((e) => e.reranked);
  if (firstReranked) select.value = firstReranked.name;
  select.addEventListener("change", noteIndex);
  noteIndex();

  const fieldset = $("#variants");
  fieldset.querySelectorAll("label").forEach((node) => node.remove());
  for (const name of catalogue.variants) {
    const id = `variant-${name}`;
    const box = element("input", { type: "checkbox", id, name: "variant", value: name });
    box.checked = name === "control";
    fieldset.append(element("label", { for: id, class: "check" }, box, ` ${name}`));
  }
  say("#compare-message", catalogue.indices.length ? "" : "The cluster has no open indices to search.");
}

function noteIndex() {
  const name = $("#index").value;
  const entry = [...catalogue.indices, ...catalogue.aliases].find((e) => e.name === name);
  $("#index-note").textContent = entry ? describeTarget(entry) : "";
}

function badge(move, clusterRank) {
  const kinds = {
    up: [`▲ ${move.by}`, `moved up ${move.by} from cluster rank ${clusterRank}`],
    down: [`▼ ${move.by}`, `moved down ${move.by} from cluster rank ${clusterRank}`],
    new: [`new (was ${clusterRank})`, `new on this page: cluster rank ${clusterRank}`],
    same: ["=", "same rank as in the cluster's order"],
  };
  const [text, label] = kinds[move.kind];
  return element("span", { class: `badge ${move.kind}`, "aria-label": label, title: label }, text);
}

function hitRow(hit, kind) {
  const scores = kind === "cluster"
    ? `cluster ${number(hit.cluster_score, 3)}`
    : `cluster ${number(hit.cluster_score, 3)} · model ${number(hit.model_score, 4)} · fused ${number(hit.score, 4)}`;
  const body = element("div", { class: "hit-body" },
    element("span", { class: "title" }, hit.title ?? "(no title)"),
    element("span", { class: "doc-id" }, `${hit.index}/${hit.id}`),
    element("span", { class: "scores" }, scores));
  if (kind !== "cluster" && hit.text) {
    const read = element("pre", { class: "read" }, hit.chunk_text ?? hit.text);
    const what = hit.chunk_text !== null && hit.chunk_text !== undefined
      ? `text the model read (best chunk ${hit.chunk})` : "text the model read";
    body.append(element("details", {}, element("summary", {}, what), read));
  }
  const row = element("li", { class: "hit", "data-id": hit.id, "data-index": hit.index },
    element("span", { class: "rank", "aria-label": `rank ${hit.rank}` }, String(hit.rank)), body);
  if (kind !== "cluster") row.append(badge(hit.movement, hit.cluster_rank));
  return row;
}

function column(key, heading, meta, hits, kind, error) {
  const headingId = `heading-${key.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const section = element("section", { class: "column", "data-column": key, "aria-labelledby": headingId },
    element("h2", { id: headingId }, heading));
  for (const line of meta) section.append(element("p", { class: "meta" }, line));
  if (error) section.append(element("p", { class: "message error" }, error));
  const list = element("ol", { class: "hits", "aria-label": heading });
  for (const hit of hits) list.append(hitRow(hit, kind));
  section.append(list);
  return section;
}

function timings(took) {
  const parts = [`cluster ${number(took.cluster, 1)} ms`];
  if (typeof took.cluster_took === "number") parts.push(`cluster's took ${took.cluster_took} ms`);
  if (took.model !== undefined) parts.push(`model ${number(took.model, 1)} ms`);
  return parts.join(" · ");
}

function render(result) {
  const summary = $("#summary");
  summary.replaceChildren(element("span", {}, `${result.index}: “${result.query}”, top ${result.size}`));
  for (const variant of result.variants) {
    summary.append(element("span", { class: "status", "data-variant": variant.variant },
      `${variant.variant}: X-Rerank-Status: ${variant.status}`));
  }
  const columns = [column("cluster", "Cluster order", [timings(result.cluster.took_ms)], result.cluster.hits,
    "cluster", result.cluster.error ? `cluster answered ${result.cluster.error.status}` : null)];
  for (const variant of result.variants) {
    const meta = [`status: ${variant.status}`, timings(variant.took_ms)];
    if (variant.model) meta.push(`model ${variant.model}, window ${variant.window ?? "all"}, fusion ${variant.fusion?.mode}`);
    const error = variant.error ? `cluster answered ${variant.error.status}` : null;
    columns.push(column(`variant:${variant.variant}`, `Reranked: ${variant.variant}`, meta, variant.hits, "variant",
      error));
  }
  $("#columns").replaceChildren(...columns);
}

async function onCompare(event) {
  event.preventDefault();
  const variants = [...document.querySelectorAll('#variants input[name="variant"]:checked')].map((box) => box.value);
  const query = $("#query").value.trim();
  if (!query) {
    say("#compare-message", "Type a query first.", true);
    return;
  }
  if (!variants.length) {
    say("#compare-message", "Pick at least one variant.", true);
    return;
  }
  const request = { index: $("#index").value, query, variants, size: Number($("#size").value) || 10 };
  const button = $("#search");
  button.disabled = true;
  say("#compare-message", "Searching…");
  try {
    render(await api(`${API}/compare`, {
      method: "POST", headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify(request),
    }));
    say("#compare-message", "");
  } catch (error) {
    say("#compare-message", `The compare failed: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// ---- experiments and eval --------------------------------------------------------------------------------------

async function loadResults() {
  await Promise.all([loadExperiments(), loadEval()]);
}

async function loadExperiments() {
  let summary;
  try {
    summary = await api("/_rerank_proxy/experiments");
  } catch (error) {
    say("#experiments-message", `Could not read the experiments: ${error.message}`, true);
    return;
  }
  const body = $("#experiments tbody");
  body.replaceChildren();
  const entries = Object.entries(summary.experiments);
  for (const [name, e] of entries) {
    const share = e.a_win_share;
    const interval = share
      ? `${number(share.mean, 3)} [${number(share.lower, 3)}, ${number(share.upper, 3)}] at ${Math.round(share.level * 100)}%`
      : "—";
    const cells = [e.configured ? name : `${name} (removed)`, e.a ?? "—", e.b ?? "—", e.searches, e.clicked_searches,
      e.wins_a, e.wins_b, e.ties, number(e.delta, 3), number(e.p_value, 4), interval];
    body.append(element("tr", { "data-experiment": name },
      ...cells.map((cell, i) => element(i === 0 ? "th" : "td", i === 0 ? { scope: "row" } : {}, String(cell)))));
  }
  const held = summary.served_searches;
  say("#experiments-message", entries.length
    ? `${held.searches} served searches held for click events (at most ${held.max_searches}, ${held.ttl_s} s each).`
    : "No experiments are configured (experiments: in config.yaml).");
}

async function loadEval() {
  let answer;
  try {
    answer = await api(`${API}/eval`);
  } catch (error) {
    say("#eval-message", error.message, true);
    $("#eval-chart").replaceChildren();
    return;
  }
  if (!answer.configured) {
    say("#eval-message", "No eval file is set: write one with `rerank-proxy eval --json FILE` and name it in "
      + "the config as console.eval_json.");
    $("#eval-chart").replaceChildren();
    return;
  }
  say("#eval-message", `From ${answer.path}.`);
  $("#eval-chart").replaceChildren(evalChart(answer.results, "ndcg@10"));
}

function evalChart(results, measure) {
  const datasets = Object.keys(results).sort();
  const runs = [...new Set(datasets.flatMap((d) => Object.keys(results[d])))];
  const bar = 28, gap = 8, groupGap = 34, left = 48, top = 20, plot = 200, bottom = 48;
  const groupWidth = runs.length * (bar + gap) - gap;
  const width = Math.max(420, left + datasets.length * (groupWidth + groupGap) + 20);
  const legendTop = top + plot + bottom;
  const height = legendTop + 22 * Math.ceil(runs.length / 4) + 8;
  const values = datasets.flatMap((d) => runs.map((r) => results[d][r]?.[measure])).filter((v) => typeof v === "number");
  const ceiling = Math.max(1, ...values);
  const svg = svgElement("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img", class: "chart",
    "aria-labelledby": "eval-chart-title", "data-measure": measure,
  });
  svg.append(svgElement("title", { id: "eval-chart-title" }, `${measure} per dataset and run`));
  for (let i = 0; i <= 4; i += 1) {
    const value = (ceiling * i) / 4;
    const y = top + plot - (plot * i) / 4;
    svg.append(svgElement("line", { x1: left, x2: width - 10, y1: y, y2: y, class: "grid" }));
    svg.append(svgElement("text", { x: left - 6, y: y + 4, class: "tick", "text-anchor": "end" }, value.toFixed(2)));
  }
  datasets.forEach((dataset, d) => {
    const x0 = left + groupGap / 2 + d * (groupWidth + groupGap);
    runs.forEach((run, r) => {
      const value = results[dataset][run]?.[measure];
      if (typeof value !== "number") return;
      const h = (plot * value) / ceiling;
      const x = x0 + r * (bar + gap);
      const rect = svgElement("rect", {
        x, y: top + plot - h, width: bar, height: Math.max(h, 0.5), class: `bar run-${r % 8}`,
        "data-dataset": dataset, "data-run": run, "data-value": value,
      });
      rect.append(svgElement("title", {}, `${dataset}, ${run}: ${measure} ${value.toFixed(4)}`));
      svg.append(rect);
      svg.append(svgElement("text", { x: x + bar / 2, y: top + plot - h - 4, class: "value", "text-anchor": "middle" },
        value.toFixed(3)));
    });
    svg.append(svgElement("text", { x: x0 + groupWidth / 2, y: top + plot + 18, class: "label", "text-anchor": "middle" },
      dataset));
  });
  runs.forEach((run, r) => {
    const x = left + (r % 4) * 150;
    const y = legendTop + 22 * Math.floor(r / 4);
    svg.append(svgElement("rect", { x, y: y - 10, width: 12, height: 12, class: `swatch run-${r % 8}` }));
    svg.append(svgElement("text", { x: x + 18, y, class: "legend" }, run));
  });
  return svg;
}

// ---- start -----------------------------------------------------------------------------------------------------

setUpTabs();
$("#compare-form").addEventListener("submit", onCompare);
loadIndices();
