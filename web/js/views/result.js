/** The result view: the image that was given, then who answered, the labels, and the timing. */

import {h, replaceChildren} from "../dom.js";
import {byteSize, dimensions, duration, percent} from "../format.js";
import {untrainedBadge} from "./models.js";
import {renderPredictions} from "./predictions.js";

/**
 * A caption for the image: its name, its size, and what was actually sent.
 *
 * @param {import("../inputs.js").ImageSource} source
 * @param {import("../downscale.js").PreparedImage|null} prepared
 * @returns {string}
 */
export function describeUpload(source, prepared) {
  if (source.kind !== "file") return source.kind === "gcs" ? "Read by the service from Cloud Storage" : "Fetched by the service";
  if (!prepared) return `${byteSize(source.file.size)}`;
  if (prepared.resized) {
    return `${dimensions(prepared.originalWidth, prepared.originalHeight)}, ${byteSize(prepared.originalBytes)}; `
      + `made smaller to ${dimensions(prepared.width, prepared.height)}, ${byteSize(prepared.bytes)} sent`;
  }
  const size = prepared.width ? `${dimensions(prepared.width, prepared.height)}, ` : "";
  return `${size}${byteSize(prepared.bytes)}, sent unchanged`;
}

/**
 * One sentence summing up an answer, for the live region.
 *
 * @param {import("../api.js").ClassifyResponse} response
 * @returns {string}
 */
export function summarizeAnswer(response) {
  const predictions = response.results?.[0]?.predictions ?? [];
  const top = predictions[0];
  const who = `${response.model.name} version ${response.model.version}`;
  if (!top) return `${who} gave no labels.`;
  const others = predictions.slice(1, 3).map((p) => `${p.label} ${percent(p.score)}`).join(", ");
  return `${who}: ${top.label}, ${percent(top.score)}${others ? `; then ${others}` : ""}.`;
}

/**
 * The timing line: server time and round trip, and whether the model had to be loaded.
 *
 * @param {import("../api.js").ClassifyResponse} response
 * @param {number} elapsedMs
 * @returns {HTMLElement}
 */
export function renderTiming(response, elapsedMs) {
  const timing = response.timing_ms ?? {};
  const temperature = response.cold_start
    ? h("span", {class: "badge badge-cold", title: "The model was loaded for this request"}, "cold start")
    : h("span", {class: "badge badge-warm", title: "The model was already loaded"}, "warm");
  return h("div", {class: "timing"},
    h("p", {class: "timing-line"},
      temperature, " ",
      h("span", {text: `${duration(timing.total)} on the server, ${duration(elapsedMs)} in all`})),
    h("details", {class: "timing-details"},
      h("summary", {text: "Timing details"}),
      h("dl", {class: "facts"},
        h("div", {class: "fact"}, h("dt", {text: "Loading the model"}),
          h("dd", {text: response.cold_start ? duration(timing.model_load) : "already loaded"})),
        h("div", {class: "fact"}, h("dt", {text: "Decoding and preparing"}), h("dd", {text: duration(timing.decode_preprocess)})),
        h("div", {class: "fact"}, h("dt", {text: "Inference"}), h("dd", {text: duration(timing.inference)})),
        h("div", {class: "fact"}, h("dt", {text: "Server total"}), h("dd", {text: duration(timing.total)})),
        h("div", {class: "fact"}, h("dt", {text: "Round trip"}), h("dd", {text: duration(elapsedMs)})))));
}

/** Renders into the result area: a figure with the image, and an answer beside it. */
export class ResultView {
  /**
   * @param {HTMLElement} container the result area (its aria-busy is kept up to date)
   */
  constructor(container) {
    this.container = container;
    this.figure = h("figure", {class: "preview"});
    this.answer = h("div", {class: "answer"});
    /** @type {string|null} */
    this.objectUrl = null;
  }

  /**
   * Show the image just given (an object URL for files; the address itself for https links;
   * a placeholder for gs:// URIs, which a browser cannot read).
   *
   * @param {import("../inputs.js").ImageSource} source
   */
  showImage(source) {
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = null;
    let picture;
    const placeholder = (text) => h("div", {class: "preview-placeholder", text});
    if (source.kind === "file") {
      this.objectUrl = URL.createObjectURL(source.file);
      picture = h("img", {src: this.objectUrl, alt: `The image you gave: ${source.name}`});
    } else if (source.kind === "url") {
      picture = h("img", {src: source.url, alt: `The image at ${source.url}`, referrerpolicy: "no-referrer"});
    } else {
      picture = placeholder("No preview: the service reads this image straight from Cloud Storage.");
    }
    if (picture instanceof HTMLImageElement) {
      picture.addEventListener("error", () => picture.replaceWith(placeholder("No preview: this browser cannot show this file.")),
                               {once: true});
    }
    replaceChildren(this.figure, picture,
      h("figcaption", {}, h("span", {class: "preview-name", text: source.name}), h("span", {class: "preview-size"})));
    replaceChildren(this.answer);
    replaceChildren(this.container, this.figure, this.answer);
  }

  /**
   * Update the caption with what is (or was) actually sent.
   *
   * @param {string} text
   */
  showUploadSize(text) {
    const size = this.figure.querySelector(".preview-size");
    if (size) size.textContent = text;
  }

  /**
   * Show that `model` is working on the image.
   *
   * @param {string} model
   */
  showPending(model) {
    this.container.setAttribute("aria-busy", "true");
    replaceChildren(this.answer, h("p", {class: "pending"}, h("span", {class: "spinner", "aria-hidden": "true"}),
      `Asking ${model}…`));
  }

  /**
   * Show a sentence while an automatic retry is pending.
   *
   * @param {string} sentence
   */
  showWaiting(sentence) {
    replaceChildren(this.answer, h("p", {class: "pending notice"}, h("span", {class: "spinner", "aria-hidden": "true"}),
      sentence));
  }

  /**
   * Show the answer: the model and version that answered, the labels, the timing.
   *
   * @param {import("../api.js").ClassifyResponse} response
   * @param {number} elapsedMs
   */
  showAnswer(response, elapsedMs) {
    this.container.setAttribute("aria-busy", "false");
    const predictions = response.results?.[0]?.predictions ?? [];
    replaceChildren(this.answer,
      h("div", {class: "answered-by"},
        h("span", {class: "answered-by-label", text: "Answered by"}),
        h("p", {class: "answered-by-model"},
          h("strong", {class: "answer-model", text: response.model.name}), " ",
          h("span", {class: "answer-version", text: `version ${response.model.version}`}),
          response.model.random_init ? [" ", untrainedBadge()] : null)),
      response.model.random_init
        ? h("p", {class: "model-warning", text: "This model is untrained: these labels are random."}) : null,
      renderPredictions(predictions),
      renderTiming(response, elapsedMs));
  }

  /** Leave the image in place and clear the answer (after an error). */
  showNoAnswer() {
    this.container.setAttribute("aria-busy", "false");
    replaceChildren(this.answer);
  }
}
