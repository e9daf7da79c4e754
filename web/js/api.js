/**
 * The HTTP client of the imgclassify API (README "API (v1)"): list the models, describe one,
 * classify one image. It knows the wire format and the retry rule, nothing about the page.
 *
 * Retry rule: 503 (and 502/504 from a gateway) mean "warming up or briefly unavailable" and a
 * network failure means "not reachable right now"; both are retried on their own, waiting what
 * `Retry-After` asks (else 2, 4, 8 s), up to `maxRetries` times. Nothing else is retried: a
 * 429 means the quota is spent, and retrying would only spend more of it.
 */

/**
 * @typedef {object} ModelSummary
 * @property {string} name
 * @property {string} version
 * @property {string} [description]
 * @property {number[]} input_size [channels, height, width]
 * @property {number} [num_classes]
 * @property {number} [weights_bytes]
 * @property {boolean} [random_init] true for untrained weights
 * @property {boolean} [default]
 * @property {number|null} [top1_accuracy]
 * @property {string} [architecture] `library/builder`; `trained/linear_head` for a trained classifier
 * @property {"fp32"|"int8"} [precision] int8: a twin quantized from `quantized_from`
 * @property {{held_out_crops: number, judged_crops?: number, top1_agreement: number, top1_agreement_all?: number,
 *   top5_overlap: number, max_probability_difference: number, source_noise_stable?: number}|null} [agreement]
 *   an int8 twin's measured agreement with its source (top-1 on the judged crops, the rest on all)
 * @property {{name: string, version: string}|null} [quantized_from]
 * @property {string[]} [versions]
 */

/**
 * @typedef {object} Evaluation a trained classifier's figures on its held-out images
 * @property {number} images
 * @property {number} accuracy 0..1
 * @property {{label: string, precision: number, recall: number, images: number}[]} per_label
 * @property {number[][]} confusion_matrix rows: true label, columns: predicted, in per_label's order
 */

/**
 * @typedef {object} ModelList
 * @property {ModelSummary[]} models
 * @property {string|null} default_model
 */

/**
 * @typedef {object} Prediction
 * @property {string} label
 * @property {number} index
 * @property {number} score softmax probability
 */

/**
 * @typedef {object} ClassifyResponse
 * @property {{name: string, version: string, random_init: boolean}} model
 * @property {{predictions: Prediction[]}[]} results
 * @property {boolean} cold_start
 * @property {{model_load: number, decode_preprocess: number, inference: number, total: number}} timing_ms
 */

/**
 * What to classify: bytes (a Blob with its content type), or where the service should read them.
 *
 * @typedef {{blob: Blob, type?: string} | {gcsUri: string} | {url: string}} ImagePayload
 */

/**
 * @typedef {object} RetryNotice
 * @property {number} attempt       the retry about to happen, from 1
 * @property {number} maxRetries
 * @property {number} delaySeconds  how long the client waits first
 * @property {ApiError} error       what the last attempt answered
 */

const RETRYABLE_STATUSES = new Set([0, 502, 503, 504]);
const MAX_DELAY_SECONDS = 30;

/** An API answer that is not a success, or a request that never got an answer (status 0). */
export class ApiError extends Error {
  /**
   * @param {{status: number, code: string, message: string, retryAfterSeconds?: number|null}} fields
   */
  constructor({status, code, message, retryAfterSeconds = null}) {
    super(message);
    this.name = "ApiError";
    /** HTTP status; 0 when the service could not be reached. */
    this.status = status;
    /** The API's error code (README), or API_KEY_REFUSED / QUOTA_EXCEEDED / HTTP_<status> / NETWORK_ERROR. */
    this.code = code;
    /** @type {number|null} */
    this.retryAfterSeconds = retryAfterSeconds;
  }

  /** Whether waiting and sending the same request again may succeed. */
  get retryable() {
    return RETRYABLE_STATUSES.has(this.status);
  }

  /**
   * Build the error from a non-2xx response: the API's `{"error": {...}}` body when there is
   * one; a gateway's own body (e.g. a 429 from the quota) otherwise.
   *
   * @param {Response} response
   * @returns {Promise<ApiError>}
   */
  static async fromResponse(response) {
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      // not JSON: a proxy's or gateway's HTML page
    }
    const error = payload && typeof payload.error === "object" ? payload.error : null;
    const code = typeof error?.code === "string" ? error.code : gatewayCode(response.status, payload);
    const message = typeof error?.message === "string" ? error.message
      : typeof payload?.message === "string" ? payload.message : response.statusText || `HTTP ${response.status}`;
    return new ApiError({status: response.status, code, message,
                         retryAfterSeconds: parseRetryAfter(response.headers.get("Retry-After"))});
  }
}

/**
 * A code for an answer that is not the API's: API Gateway's own refusals are Envoy's
 * `{"code": STATUS, "message": "STATUS_NAME: text"}` (ESPv2): 401 UNAUTHENTICATED (no key),
 * 400 INVALID_ARGUMENT "API key not valid" or 403 PERMISSION_DENIED (a key refused, or its
 * referrer) read as API_KEY_REFUSED, 429 RESOURCE_EXHAUSTED as QUOTA_EXCEEDED.
 *
 * @param {number} status
 * @param {unknown} payload the parsed body, or null
 * @returns {string}
 */
function gatewayCode(status, payload) {
  if (status === 429) return "QUOTA_EXCEEDED";
  const message = typeof payload?.message === "string" && payload?.code === status ? payload.message : "";
  if (status === 401 || status === 403 || /^INVALID_ARGUMENT: API key /.test(message)) return "API_KEY_REFUSED";
  return `HTTP_${status}`;
}

/**
 * Seconds to wait from a `Retry-After` value (delta-seconds or an HTTP date), or null.
 *
 * @param {string|null} value
 * @param {number} [now] milliseconds since the epoch
 * @returns {number|null}
 */
export function parseRetryAfter(value, now = Date.now()) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - now) / 1000));
}

/**
 * Resolve after `ms`, or reject with the signal's reason when it is aborted first.
 *
 * @param {number} ms
 * @param {AbortSignal} [signal]
 * @returns {Promise<void>}
 */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    function onAbort() {
      clearTimeout(timer);
      reject(signal.reason);
    }
    signal?.addEventListener("abort", onAbort, {once: true});
  });
}

/** Talks to one deployment of the API. */
export class ApiClient {
  /**
   * @param {object} options
   * @param {string} [options.apiBase] API root without trailing slash; "" for the page's origin
   * @param {string} [options.apiKey]  sent as `x-api-key` when not empty
   * @param {number} [options.maxRetries] retries of a 503 or unreachable service
   * @param {typeof fetch} [options.fetch]
   * @param {(ms: number, signal?: AbortSignal) => Promise<void>} [options.sleep]
   */
  constructor({apiBase = "", apiKey = "", maxRetries = 3, fetch = globalThis.fetch.bind(globalThis),
               sleep: wait = sleep} = {}) {
    this.apiBase = apiBase;
    this.apiKey = apiKey;
    this.maxRetries = maxRetries;
    this.fetch = fetch;
    this.sleep = wait;
  }

  /**
   * `GET /v1/models`: every published model, default first.
   *
   * @param {{signal?: AbortSignal, revalidate?: boolean, onRetry?: (notice: RetryNotice) => void}} [options]
   *   `revalidate` asks the server again even if the browser's HTTP cache still holds a fresh copy
   *   (after an UNKNOWN_MODEL answer, for example)
   * @returns {Promise<ModelList>}
   */
  async listModels({signal, revalidate = false, onRetry} = {}) {
    const {body} = await this.#send("/v1/models", {method: "GET", cache: revalidate ? "no-cache" : "default"},
                                    {signal, onRetry});
    const models = Array.isArray(body?.models) ? body.models.filter((m) => m && typeof m.name === "string") : [];
    return {models, default_model: typeof body?.default_model === "string" ? body.default_model : null};
  }

  /**
   * `GET /v1/models/{name}`: one model's manifest summary, labels, evaluation and versions.
   *
   * @param {string} name
   * @param {{signal?: AbortSignal}} [options]
   * @returns {Promise<{evaluation: Evaluation|null} & ModelSummary>}
   */
  async describeModel(name, {signal} = {}) {
    const {body} = await this.#send(`/v1/models/${encodeURIComponent(name)}`, {method: "GET"}, {signal});
    return body;
  }

  /**
   * `POST /v1/models/{model}:classify?top_k=N`: classify one image with one model.
   *
   * @param {object} request
   * @param {string} request.model  model name, optionally `name@version`
   * @param {ImagePayload} request.image
   * @param {number} [request.topK]
   * @param {AbortSignal} [request.signal]
   * @param {(notice: RetryNotice) => void} [request.onRetry] told before each automatic retry
   * @returns {Promise<{result: ClassifyResponse, elapsedMs: number}>} the answer and the
   *   round trip of the attempt that succeeded, in milliseconds
   */
  async classify({model, image, topK = 5, signal, onRetry}) {
    const path = `/v1/models/${encodeURIComponent(model)}:classify?top_k=${encodeURIComponent(topK)}`;
    let init;
    if ("blob" in image) {
      init = {method: "POST", body: image.blob,
              headers: {"Content-Type": image.type || image.blob.type || "application/octet-stream"}};
    } else {
      const instance = "gcsUri" in image ? {gcs_uri: image.gcsUri} : {url: image.url};
      init = {method: "POST", headers: {"Content-Type": "application/json"},
              body: JSON.stringify({instances: [instance]})};
    }
    const {body, elapsedMs} = await this.#send(path, init, {signal, onRetry});
    return {result: body, elapsedMs};
  }

  async #send(path, init, {signal, onRetry}) {
    const headers = {...(init.headers ?? {})};
    if (this.apiKey) headers["x-api-key"] = this.apiKey;
    for (let attempt = 0; ; attempt += 1) {
      const started = performance.now();
      let error;
      try {
        const response = await this.fetch(this.apiBase + path, {...init, headers, signal});
        if (response.ok) {
          const body = await response.json();
          return {body, elapsedMs: performance.now() - started};
        }
        error = await ApiError.fromResponse(response);
      } catch (thrown) {
        if (signal?.aborted || thrown instanceof ApiError) throw thrown;
        if (thrown instanceof SyntaxError) {
          throw new ApiError({status: 502, code: "INVALID_RESPONSE", message: "the answer was not JSON"});
        }
        error = new ApiError({status: 0, code: "NETWORK_ERROR", message: String(thrown?.message ?? thrown)});
      }
      if (!error.retryable || attempt >= this.maxRetries) throw error;
      const delaySeconds = Math.min(MAX_DELAY_SECONDS, Math.max(1, error.retryAfterSeconds ?? 2 ** (attempt + 1)));
      onRetry?.({attempt: attempt + 1, maxRetries: this.maxRetries, delaySeconds, error});
      await this.sleep(delaySeconds * 1000, signal);
    }
  }
}
