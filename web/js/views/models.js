/** The model picker: its options and the facts about the chosen model. */

import {h, replaceChildren} from "../dom.js";
import {byteSize, percent} from "../format.js";

/**
 * What an option of the model list says: name, version, and the default / untrained notes.
 *
 * @param {import("../api.js").ModelSummary} model
 * @returns {string}
 */
export function modelOptionLabel(model) {
  const notes = [`v${model.version}`];
  if (model.default) notes.push("default");
  if (model.random_init) notes.push("untrained");
  if (model.precision === "int8") notes.push("int8");
  return `${model.name} (${notes.join(", ")})`;
}

/**
 * Fill `select` with `models` and select `chosen`.
 *
 * @param {HTMLSelectElement} select
 * @param {import("../api.js").ModelSummary[]} models
 * @param {string|null} chosen
 */
export function renderModelOptions(select, models, chosen) {
  replaceChildren(select, models.map((model) => h("option", {value: model.name, text: modelOptionLabel(model)})));
  if (chosen) select.value = chosen;
  select.disabled = models.length === 0;
}

/**
 * A badge that marks a model with random, untrained weights.
 *
 * @returns {HTMLElement}
 */
export function untrainedBadge() {
  return h("span", {class: "badge badge-warning", title: "Random weights, published for testing"}, "untrained");
}

function fact(name, value) {
  return value === null || value === undefined || value === ""
    ? null : h("div", {class: "fact"}, h("dt", {text: name}), h("dd", {text: value}));
}

/**
 * What an int8 twin's measured agreement with its source says, in one line.
 *
 * @param {import("../api.js").ModelSummary} model
 * @returns {string|null}
 */
export function agreementText(model) {
  const agreement = model.agreement;
  if (!agreement || typeof agreement.top1_agreement !== "number") return null;
  const source = model.quantized_from ? ` ${model.quantized_from.name}@${model.quantized_from.version}` : "";
  // judged crops: those whose answer the source keeps under one 8-bit step of input noise
  const crops = typeof agreement.judged_crops === "number" && typeof agreement.top1_agreement_all === "number"
    ? `${agreement.judged_crops} judged held-out crops (${percent(agreement.top1_agreement_all)} of all ` +
      `${agreement.held_out_crops})`
    : `${agreement.held_out_crops} held-out crops`;
  return `top-1 same as${source} on ${percent(agreement.top1_agreement)} of ${crops}, ` +
    `top-5 overlap ${percent(agreement.top5_overlap)}`;
}

/**
 * Describe `model` in `container`: description, input size, classes, weights, precision,
 * accuracy (an int8 twin's agreement with its source), and the untrained badge when its
 * manifest says so.
 *
 * @param {HTMLElement} container
 * @param {import("../api.js").ModelSummary|undefined} model
 */
export function renderModelDetails(container, model) {
  if (!model) {
    replaceChildren(container);
    return;
  }
  const [, height, width] = Array.isArray(model.input_size) ? model.input_size : [];
  replaceChildren(container,
    model.default || model.random_init
      ? h("p", {class: "model-title"}, model.default ? h("span", {class: "badge"}, "default") : null,
        model.random_init ? untrainedBadge() : null)
      : null,
    model.description ? h("p", {class: "model-description", text: model.description}) : null,
    model.random_init
      ? h("p", {class: "model-warning", text: "Its weights are random, so its labels mean nothing: it exists for testing."})
      : null,
    h("dl", {class: "facts"},
      fact("Input size", height && width ? `${width} × ${height} px` : null),
      fact("Classes", model.num_classes ? String(model.num_classes) : null),
      fact("Version", model.version),
      fact("Weights", model.weights_bytes ? byteSize(model.weights_bytes) : null),
      fact("Precision", model.precision || "fp32"),
      fact("Agreement", agreementText(model)),
      fact("Top-1 accuracy", typeof model.top1_accuracy === "number" ? `${model.top1_accuracy}%` : null)));
}

/**
 * Whether `model` is a classifier trained by `publish train` (its evaluation is worth showing).
 *
 * @param {import("../api.js").ModelSummary|undefined} model
 * @returns {boolean}
 */
export function isTrainedClassifier(model) {
  return typeof model?.architecture === "string" && model.architecture.startsWith("trained/");
}

/**
 * Show a trained classifier's held-out evaluation in `container`: accuracy, per-label
 * precision and recall, and the confusion matrix; empty it for `null`.
 *
 * @param {HTMLElement} container
 * @param {import("../api.js").Evaluation|null|undefined} evaluation
 */
export function renderEvaluation(container, evaluation) {
  if (!evaluation || !Array.isArray(evaluation.per_label)) {
    replaceChildren(container);
    return;
  }
  const labels = evaluation.per_label.map((row) => row.label);
  const cell = (text, tag = "td", attributes = {}) => h(tag, {...attributes, text: String(text)});
  replaceChildren(container,
    h("h3", {class: "evaluation-heading",
             text: `Held-out accuracy ${percent(evaluation.accuracy)} on ${evaluation.images} images`}),
    h("table", {class: "evaluation-table"},
      h("caption", {text: "Per label"}),
      h("thead", {}, h("tr", {}, cell("Label", "th", {scope: "col"}), cell("Precision", "th", {scope: "col"}),
                       cell("Recall", "th", {scope: "col"}), cell("Images", "th", {scope: "col"}))),
      h("tbody", {}, ...evaluation.per_label.map((row) => h("tr", {},
        cell(row.label, "th", {scope: "row"}), cell(percent(row.precision)), cell(percent(row.recall)),
        cell(row.images))))),
    h("table", {class: "evaluation-table confusion-matrix"},
      h("caption", {text: "Confusion matrix (rows: true label, columns: predicted)"}),
      h("thead", {}, h("tr", {}, cell("", "th"), ...labels.map((label) => cell(label, "th", {scope: "col"})))),
      h("tbody", {}, ...evaluation.confusion_matrix.map((row, index) => h("tr", {},
        cell(labels[index], "th", {scope: "row"}),
        ...row.map((count, column) => cell(count, "td", count && column === index ? {class: "diagonal"} : {})))))));
}
