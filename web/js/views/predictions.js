/** Predictions as a ranked list of labels with bars and percentages (shared by both views). */

import {h} from "../dom.js";
import {percent} from "../format.js";

/**
 * An ordered list: one row per label, its percentage as text (what a screen reader reads)
 * and as a bar (decoration, hidden from assistive technology).
 *
 * @param {import("../api.js").Prediction[]} predictions best first
 * @param {string} [label] accessible name of the list
 * @returns {HTMLOListElement}
 */
export function renderPredictions(predictions, label = "Labels, most likely first") {
  return /** @type {HTMLOListElement} */ (h("ol", {class: "predictions", "aria-label": label},
    predictions.map((prediction, rank) => {
      const fill = h("span", {class: "prediction-fill"});
      fill.style.setProperty("--score", String(Math.max(0, Math.min(1, prediction.score))));
      return h("li", {class: rank === 0 ? "prediction top" : "prediction"},
        h("span", {class: "prediction-label", text: prediction.label}),
        h("span", {class: "prediction-score", text: percent(prediction.score)}),
        h("span", {class: "prediction-bar", "aria-hidden": "true"}, fill));
    })));
}
