/**
 * The page's controller: keeps what is chosen (model, labels to show, image), asks the API,
 * and hands answers to the views. Everything else lives in a module with one job.
 */

import {ApiClient} from "./api.js";
import {h, replaceChildren} from "./dom.js";
import {prepareImage, uploadShortSide} from "./downscale.js";
import {bindImageInputs} from "./inputs.js";
import {explainError, retrySentence} from "./messages.js";
import {pickModel, rememberModel, rememberTopK, rememberedModel, rememberedTopK, TOP_K_CHOICES} from "./preferences.js";
import {readConfig} from "./settings.js";
import {CompareView} from "./views/compare.js";
import {isTrainedClassifier, renderEvaluation, renderModelDetails, renderModelOptions} from "./views/models.js";
import {ResultView, describeUpload, summarizeAnswer} from "./views/result.js";

const byId = (id) => document.getElementById(id);
const elements = {
  model: /** @type {HTMLSelectElement} */ (byId("model")),
  modelDetails: byId("model-details"),
  modelEvaluation: byId("model-evaluation"),
  modelNote: byId("model-note"),
  topK: /** @type {HTMLSelectElement} */ (byId("top-k")),
  fileInput: /** @type {HTMLInputElement} */ (byId("file-input")),
  cameraInput: /** @type {HTMLInputElement} */ (byId("camera-input")),
  dropZone: byId("drop-zone"),
  sourceForm: /** @type {HTMLFormElement} */ (byId("source-form")),
  sourceInput: /** @type {HTMLInputElement} */ (byId("source")),
  status: byId("status"),
  error: byId("error"),
  result: byId("result"),
  resultHeading: byId("result-heading"),
  compareButton: /** @type {HTMLButtonElement} */ (byId("compare-button")),
  compareSection: byId("compare-section"),
  compareHeading: byId("compare-heading"),
  compareClose: byId("compare-close"),
  compareGrid: byId("compare-grid"),
  compareSummary: byId("compare-summary"),
  apiOrigin: byId("api-origin"),
};

const config = readConfig();
const api = new ApiClient(config);
const resultView = new ResultView(elements.result);
const compareView = new CompareView(elements.compareGrid, elements.compareSummary);

const state = {
  /** @type {import("./api.js").ModelSummary[]} */
  models: [],
  /** @type {string|null} */
  model: null,
  topK: rememberedTopK(),
  /** @type {import("./inputs.js").ImageSource|null} */
  source: null,
  /** @type {import("./api.js").ImagePayload|null} what is sent for the current image */
  upload: null,
  compareOpen: false,
  /** @type {AbortController|null} */
  singleRun: null,
  /** @type {AbortController|null} */
  compareRun: null,
  /** @type {AbortController|null} the chosen model's evaluation, being fetched */
  evaluation: null,
};
let modelsLoaded = Promise.resolve();

function announce(text) {
  elements.status.textContent = text;
}

function clearError() {
  replaceChildren(elements.error);
}

/**
 * @param {import("./messages.js").Explanation} explanation
 * @param {(() => void)|null} [retry] shown as a "Try again" button
 */
function showError(explanation, retry = null) {
  replaceChildren(elements.error,
    h("p", {class: "error-sentence", text: explanation.sentence}),
    explanation.detail ? h("p", {class: "error-detail", text: `Details: ${explanation.detail}`}) : null,
    retry ? h("button", {class: "button", type: "button", onclick: () => { clearError(); retry(); }}, "Try again") : null);
}

function restart(key) {
  state[key]?.abort();
  state[key] = new AbortController();
  return state[key];
}

async function loadModels({revalidate = false} = {}) {
  try {
    const list = await api.listModels({revalidate, onRetry: (notice) => {
      elements.modelNote.textContent = retrySentence(notice);
      announce(elements.modelNote.textContent);
    }});
    elements.modelNote.textContent = "";
    state.models = list.models;
    if (!list.models.length) {
      state.model = null;
      renderModelOptions(elements.model, [], null);
      replaceChildren(elements.model, h("option", {value: "", text: "No models published"}));
      renderModelDetails(elements.modelDetails, undefined);
      showError({sentence: "No models are published yet, so nothing can be classified. Publish one, then reload.",
                 detail: "", canRetry: true}, () => { modelsLoaded = loadModels({revalidate: true}); });
      return;
    }
    const remembered = state.model ?? rememberedModel();
    const {name, fellBack} = pickModel(list.models, remembered, list.default_model);
    state.model = name;
    if (fellBack) rememberModel(name);
    renderModelOptions(elements.model, list.models, name);
    showModel(list.models.find((model) => model.name === name));
    if (fellBack) {
      elements.modelNote.textContent = `The model ${remembered} is no longer available; ${name} is selected instead.`;
      announce(elements.modelNote.textContent);
    }
  } catch (error) {
    const explanation = explainError(error);
    showError({...explanation, sentence: `The list of models could not be loaded. ${explanation.sentence}`},
              () => { modelsLoaded = loadModels({revalidate: true}); });
    elements.modelNote.textContent = "";
    replaceChildren(elements.model, h("option", {value: "", text: "Models unavailable"}));
  }
}

/** The chosen model's facts, and for a trained classifier its held-out evaluation (fetched). */
function showModel(model) {
  renderModelDetails(elements.modelDetails, model);
  const run = restart("evaluation");
  renderEvaluation(elements.modelEvaluation, null);
  if (!isTrainedClassifier(model)) return;
  api.describeModel(model.name, {signal: run.signal})
    .then((detail) => { if (!run.signal.aborted) renderEvaluation(elements.modelEvaluation, detail.evaluation); })
    .catch(() => {});  // the facts above stand without it; classify reports real failures
}

async function classifyCurrent() {
  if (!state.upload || !state.source) return;
  if (!state.model) {
    showError({sentence: "There is no model to use yet. Wait for the list of models, then try again.", detail: "",
               canRetry: false});
    return;
  }
  const run = restart("singleRun");
  const {model, source, upload} = state;
  clearError();
  resultView.showPending(model);
  announce(`Classifying ${source.name} with ${model}…`);
  try {
    const {result, elapsedMs} = await api.classify({
      model, image: upload, topK: state.topK, signal: run.signal,
      onRetry: (notice) => {
        const sentence = retrySentence(notice);
        resultView.showWaiting(sentence);
        announce(sentence);
      },
    });
    if (run.signal.aborted) return;
    resultView.showAnswer(result, elapsedMs);
    revealAnswer();
    announce(summarizeAnswer(result));
    agreeWithAnswer(result.model);
  } catch (error) {
    if (run.signal.aborted) return;
    resultView.showNoAnswer();
    announce("");
    const explanation = explainError(error, {model, source: source.kind === "file" ? "file" : source.kind});
    showError(explanation, explanation.canRetry ? classifyCurrent : null);
    if (error?.code === "UNKNOWN_MODEL" || error?.code === "UNKNOWN_VERSION") {
      if (state.model === model) state.model = null; // let the refreshed list choose
      modelsLoaded = loadModels({revalidate: true});
    }
  }
}

async function runCompare() {
  if (!state.upload || !state.source || !state.models.length) return;
  const run = restart("compareRun");
  const {models, source, upload} = state;
  state.compareOpen = true;
  elements.compareSection.hidden = false;
  elements.compareButton.setAttribute("aria-expanded", "true");
  compareView.start(models);
  announce(`Comparing ${models.length} models…`);
  await Promise.all(models.map(async (model) => {
    try {
      const {result, elapsedMs} = await api.classify({
        model: model.name, image: upload, topK: state.topK, signal: run.signal,
        onRetry: (notice) => compareView.wait(model.name, retrySentence(notice)),
      });
      if (!run.signal.aborted) compareView.fill(model.name, result, elapsedMs);
    } catch (error) {
      if (!run.signal.aborted) compareView.fail(model.name, explainError(error, {model: model.name, source: source.kind}).sentence);
    }
  }));
  if (!run.signal.aborted) announce(compareView.finish());
}

function closeCompare() {
  state.compareOpen = false;
  state.compareRun?.abort();
  elements.compareSection.hidden = true;
  elements.compareButton.setAttribute("aria-expanded", "false");
  elements.compareButton.focus();
}

/** On a phone the result is below the inputs: bring it into view once an image is given. */
function revealResult() {
  const top = elements.resultHeading.getBoundingClientRect().top;
  if (top > window.innerHeight * 0.6 || top < 0) {
    elements.resultHeading.scrollIntoView({block: "start",
      behavior: matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth"});
  }
}

/** The top labels are on screen when the answer arrives (on a phone they sit under the photo). */
function revealAnswer() {
  const labels = [...elements.result.querySelectorAll(".answered-by, .prediction")].slice(0, 4);
  if (!labels.length) return;
  const top = labels[0].getBoundingClientRect().top;
  const bottom = labels[labels.length - 1].getBoundingClientRect().bottom;
  if (top < 0 || bottom > window.innerHeight) {
    labels[0].scrollIntoView({block: "start",
      behavior: matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth"});
  }
}

/**
 * The picker shows the version that answered. Each instance re-reads the catalog on its own
 * clock, so an answer can come from a version the cached listing does not show yet (or any
 * more): read the listing again, and if it still disagrees, the answer is what was served.
 *
 * @param {{name: string, version: string}} answered
 */
function agreeWithAnswer(answered) {
  const listed = () => state.models.find((model) => model.name === answered.name);
  if (!listed() || listed().version === answered.version) return;
  modelsLoaded = loadModels({revalidate: true}).then(() => {
    const model = listed();
    if (!model || model.version === answered.version) return;
    model.version = answered.version;
    renderModelOptions(elements.model, state.models, state.model);
    if (state.model === model.name) renderModelDetails(elements.modelDetails, model);
  });
}

/** @param {import("./inputs.js").ImageSource} source */
async function useImage(source) {
  state.singleRun?.abort();
  state.compareRun?.abort();
  clearError();
  elements.sourceInput.removeAttribute("aria-invalid");
  state.source = source;
  state.upload = null;
  resultView.showImage(source);
  revealResult();
  if (source.kind === "file" && source.file.type && !source.file.type.startsWith("image/")) {
    state.source = null;
    elements.compareButton.disabled = true;
    resultView.showNoAnswer();
    showError(explainError({code: "NOT_AN_IMAGE"}, {source: "file"}));
    return;
  }
  elements.compareButton.disabled = false;
  await modelsLoaded;
  if (state.source !== source) return; // another image arrived meanwhile
  if (source.kind === "file") {
    resultView.showPending(state.model ?? "the service");
    const prepared = await prepareImage(source.file, uploadShortSide(state.models));
    if (state.source !== source) return; // another image arrived meanwhile
    state.upload = {blob: prepared.blob, type: prepared.type};
    resultView.showUploadSize(describeUpload(source, prepared));
  } else {
    state.upload = source.kind === "gcs" ? {gcsUri: source.gcsUri} : {url: source.url};
    resultView.showUploadSize(describeUpload(source, null));
  }
  await Promise.all([classifyCurrent(), state.compareOpen ? runCompare() : null]);
}

function boot() {
  elements.apiOrigin.textContent = config.apiBase ? `API: ${config.apiBase}` : "API: this page's own server.";
  elements.topK.value = String(TOP_K_CHOICES.includes(state.topK) ? state.topK : 5);

  elements.model.addEventListener("change", () => {
    if (!elements.model.value) return;
    state.model = elements.model.value;
    rememberModel(state.model);
    elements.modelNote.textContent = "";
    showModel(state.models.find((model) => model.name === state.model));
    classifyCurrent();
  });
  elements.topK.addEventListener("change", () => {
    state.topK = Number(elements.topK.value);
    rememberTopK(state.topK);
    classifyCurrent();
    if (state.compareOpen) runCompare();
  });
  elements.compareButton.addEventListener("click", () => {
    runCompare();
    elements.compareHeading.scrollIntoView({block: "start",
      behavior: matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth"});
  });
  elements.compareClose.addEventListener("click", closeCompare);
  elements.sourceInput.addEventListener("input", () => elements.sourceInput.removeAttribute("aria-invalid"));
  // A click anywhere on the drop zone opens the file picker, as its button does.
  elements.dropZone.addEventListener("click", (event) => {
    if (!(event.target instanceof Element) || !event.target.closest("label, input, button, a")) elements.fileInput.click();
  });

  bindImageInputs(elements, {
    onImage: (source) => { useImage(source); },
    onBadAddress: (text) => {
      elements.sourceInput.setAttribute("aria-invalid", "true");
      showError(explainError({code: text ? "INVALID_URL" : "MISSING_ADDRESS"}));
      elements.sourceInput.focus();
    },
  });
  modelsLoaded = loadModels();
}

boot();
