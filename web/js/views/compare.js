/**
 * The compare view: one card per model, filled in as each answer arrives, and a summary. An
 * int8 twin sits beside its source model, in one row, with a line that compares the two.
 */

import {h, replaceChildren} from "../dom.js";
import {duration, percent} from "../format.js";
import {untrainedBadge} from "./models.js";
import {renderPredictions} from "./predictions.js";
import {renderTiming} from "./result.js";

/**
 * @typedef {{state: "pending"} | {state: "done", response: import("../api.js").ClassifyResponse, elapsedMs: number}
 *   | {state: "failed", sentence: string}} CardState
 */

/**
 * One sentence comparing the answers: agreement on the top label, or who said what; and
 * which model answered fastest. Untrained models (random weights) answer, but their labels
 * are noise: they get no vote.
 *
 * @param {Map<string, CardState>} states by model name, in display order
 * @returns {string}
 */
export function summarizeComparison(states) {
  const answered = [...states.entries()].filter(([, s]) => s.state === "done" && s.response.results?.[0]?.predictions?.length);
  const failed = [...states.values()].filter((s) => s.state === "failed").length;
  if (!answered.length) return "No model could classify this image.";
  const done = answered.filter(([, s]) => !s.response.model.random_init);
  const untrained = answered.length - done.length;
  const tops = done.map(([name, s]) => ({name, top: s.response.results[0].predictions[0], total: s.response.timing_ms?.total ?? 0}));
  const labels = new Set(tops.map((t) => t.top.label));
  let sentence;
  if (!done.length) sentence = "Only untrained models answered: their labels are random.";
  else if (labels.size === 1) {
    const kind = untrained ? "trained model" : "model";
    sentence = `${done.length === 1 ? `The one ${kind} that answered` : `All ${done.length} ${kind}s that answered`} put ${tops[0].top.label} first.`;
  } else {
    sentence = `The models disagree: ${tops.map((t) => `${t.name} says ${t.top.label} (${percent(t.top.score)})`).join(", ")}.`;
  }
  if (done.length && untrained) sentence += ` ${untrained === 1 ? "One untrained model was" : `${untrained} untrained models were`} not counted.`;
  if (done.length > 1) {
    const fastest = tops.reduce((best, t) => (t.total < best.total ? t : best));
    sentence += ` Fastest on the server: ${fastest.name} (${duration(fastest.total)}).`;
  }
  if (failed) sentence += ` ${failed === 1 ? "One model" : `${failed} models`} could not answer.`;
  return sentence;
}

/**
 * The grid's groups, in list order: each model followed by its int8 twins in the list (a twin
 * whose source is not listed stands alone, where it is).
 *
 * @param {import("../api.js").ModelSummary[]} models
 * @returns {import("../api.js").ModelSummary[][]}
 */
export function groupTwins(models) {
  const names = new Set(models.map((model) => model.name));
  /** @type {Map<string, import("../api.js").ModelSummary[]>} */
  const twins = new Map();
  for (const model of models) {
    const source = model.quantized_from?.name;
    if (!source || source === model.name || !names.has(source)) continue;
    twins.set(source, [...(twins.get(source) ?? []), model]);
  }
  const placed = new Set([...twins.values()].flat().map((model) => model.name));
  return models.filter((model) => !placed.has(model.name)).map((model) => [model, ...(twins.get(model.name) ?? [])]);
}

/**
 * One sentence on a twin's answer beside its source's: the same top label or not, and the
 * forward time of each (the twin's point is speed; its measured agreement says how often
 * the labels match).
 *
 * @param {string} sourceName
 * @param {CardState|undefined} source
 * @param {string} twinName
 * @param {CardState|undefined} twin
 * @returns {string}
 */
export function twinVerdict(sourceName, source, twinName, twin) {
  if (source?.state !== "done" || twin?.state !== "done") return "";
  const first = (state) => state.response.results?.[0]?.predictions?.[0];
  const [sourceTop, twinTop] = [first(source), first(twin)];
  if (!sourceTop || !twinTop) return "";
  const verdict = sourceTop.label === twinTop.label
    ? `${twinName} puts ${twinTop.label} first, as ${sourceName} does`
    : `${twinName} puts ${twinTop.label} (${percent(twinTop.score)}) first, ${sourceName} ${sourceTop.label} ` +
      `(${percent(sourceTop.score)})`;
  const [sourceMs, twinMs] = [source.response.timing_ms?.inference, twin.response.timing_ms?.inference];
  const speed = typeof sourceMs === "number" && typeof twinMs === "number" && sourceMs > 0
    ? `; inference ${duration(twinMs)} against ${duration(sourceMs)} (${(twinMs / sourceMs).toFixed(2)}×)` : "";
  return `${verdict}${speed}.`;
}

/** Renders the grid of model cards. */
export class CompareView {
  /**
   * @param {HTMLElement} grid  a list element; one item per model
   * @param {HTMLElement} summary  where the comparison sentence goes
   */
  constructor(grid, summary) {
    this.grid = grid;
    this.summary = summary;
    /** @type {Map<string, CardState>} */
    this.states = new Map();
    /** @type {Map<string, HTMLElement>} */
    this.cards = new Map();
    /** @type {{names: string[], line: HTMLElement}[]} a source, its twins, and the line comparing them */
    this.pairs = [];
  }

  /**
   * Start a comparison: one pending card per model, in list order.
   *
   * @param {import("../api.js").ModelSummary[]} models
   */
  start(models) {
    this.states = new Map(models.map((model) => [model.name, {state: "pending"}]));
    this.cards = new Map(models.map((model) => [model.name, h("li", {class: "card", "data-model": model.name,
                                                                    "aria-busy": "true"})]));
    for (const model of models) {
      const card = this.cards.get(model.name);
      if (model.precision === "int8") card.classList.add("card-twin");
      card.append(
        h("h3", {class: "card-title"}, h("span", {class: "card-name", text: model.name}), " ",
          h("span", {class: "card-version", text: `v${model.version}`}),
          model.random_init ? [" ", untrainedBadge()] : null,
          model.precision === "int8" ? [" ", h("span", {class: "badge", text: "int8"})] : null),
        h("div", {class: "card-body"},
          h("p", {class: "pending"}, h("span", {class: "spinner", "aria-hidden": "true"}), "Classifying…")));
    }
    this.pairs = [];
    const items = groupTwins(models).map((group) => {
      if (group.length === 1) return this.cards.get(group[0].name);
      const names = group.map((model) => model.name);
      const line = h("p", {class: "pair-verdict", "aria-live": "polite"});
      this.pairs.push({names, line});
      const twins = names.length === 2 ? "its int8 twin" : "its int8 twins";
      return h("li", {class: "compare-pair", "data-source": names[0]},
        h("ul", {class: "pair-cards", "aria-label": `${names[0]} and ${twins}, side by side`},
          names.map((name) => this.cards.get(name))),
        line);
    });
    replaceChildren(this.grid, items);
    this.summary.textContent = `Asking ${models.length} ${models.length === 1 ? "model" : "models"}…`;
  }

  /** Rewrite the line under each source and its twins from the answers so far. */
  comparePairs() {
    for (const {names: [source, ...twins], line} of this.pairs) {
      line.textContent = twins.map((twin) => twinVerdict(source, this.states.get(source), twin, this.states.get(twin)))
        .filter(Boolean).join(" ");
    }
  }

  /**
   * Show a waiting sentence on one card (an automatic retry is pending).
   *
   * @param {string} name
   * @param {string} sentence
   */
  wait(name, sentence) {
    const body = this.cards.get(name)?.querySelector(".card-body");
    if (body) replaceChildren(body, h("p", {class: "pending notice"}, h("span", {class: "spinner", "aria-hidden": "true"}), sentence));
  }

  /**
   * Fill one card with its answer.
   *
   * @param {string} name
   * @param {import("../api.js").ClassifyResponse} response
   * @param {number} elapsedMs
   */
  fill(name, response, elapsedMs) {
    const card = this.cards.get(name);
    if (!card) return;
    this.states.set(name, {state: "done", response, elapsedMs});
    card.setAttribute("aria-busy", "false");
    card.querySelector(".card-version").textContent = `v${response.model.version}`;
    replaceChildren(card.querySelector(".card-body"),
      renderPredictions(response.results?.[0]?.predictions ?? [], `Labels from ${name}, most likely first`),
      renderTiming(response, elapsedMs));
    this.comparePairs();
  }

  /**
   * Show on one card why it has no answer.
   *
   * @param {string} name
   * @param {string} sentence
   */
  fail(name, sentence) {
    const card = this.cards.get(name);
    if (!card) return;
    this.states.set(name, {state: "failed", sentence});
    card.setAttribute("aria-busy", "false");
    replaceChildren(card.querySelector(".card-body"), h("p", {class: "card-error", text: sentence}));
  }

  /**
   * Write the comparison summary (call once every card is settled) and return it.
   *
   * @returns {string}
   */
  finish() {
    const sentence = summarizeComparison(this.states);
    this.summary.textContent = sentence;
    return sentence;
  }
}
