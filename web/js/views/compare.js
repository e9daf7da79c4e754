/** The compare view: one card per model, filled in as each answer arrives, and a summary. */

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
      card.append(
        h("h3", {class: "card-title"}, h("span", {class: "card-name", text: model.name}), " ",
          h("span", {class: "card-version", text: `v${model.version}`}),
          model.random_init ? [" ", untrainedBadge()] : null),
        h("div", {class: "card-body"},
          h("p", {class: "pending"}, h("span", {class: "spinner", "aria-hidden": "true"}), "Classifying…")));
    }
    replaceChildren(this.grid, [...this.cards.values()]);
    this.summary.textContent = `Asking ${models.length} ${models.length === 1 ? "model" : "models"}…`;
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
