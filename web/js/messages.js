/**
 * Errors as plain sentences. One sentence a person can act on, chosen by the API's error
 * code (README, "Errors"); the API's own message is kept as a detail line underneath.
 */

const FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF";

/**
 * @typedef {object} ErrorContext
 * @property {string} [model]        the model the request named
 * @property {"file"|"gcs"|"url"} [source] where the image came from
 */

/**
 * @typedef {object} Explanation
 * @property {string} sentence  what happened and what to do, in plain words
 * @property {string} detail    the code and message the service gave, for the curious
 * @property {boolean} canRetry whether a "Try again" button makes sense
 */

/**
 * Explain `error` (an ApiError, or anything thrown) in a sentence.
 *
 * @param {{status?: number, code?: string, message?: string}} error
 * @param {ErrorContext} [context]
 * @returns {Explanation}
 */
export function explainError(error, context = {}) {
  const status = Number(error?.status ?? 0);
  const code = String(error?.code ?? "");
  const detail = error?.message ? `${code || "ERROR"}: ${error.message}` : "";
  const model = context.model ? `“${context.model}”` : "that model";
  const fromElsewhere = context.source === "gcs" || context.source === "url";

  const plain = (sentence, canRetry = false) => ({sentence, detail, canRetry});

  switch (code) {
    case "NOT_AN_IMAGE":
    case "UNSUPPORTED_IMAGE_FORMAT":
    case "UNSUPPORTED_MEDIA_TYPE":
      return plain(fromElsewhere
        ? `The file at that address is not an image the service can read. It takes ${FORMATS}.`
        : `This file is not an image the service can read. Choose a ${FORMATS} photo.`);
    case "UNDECODABLE_IMAGE":
      return plain("This image is damaged or incomplete, so it cannot be read. Try another copy of the photo.");
    case "PAYLOAD_TOO_LARGE":
      return plain(fromElsewhere
        ? "The image at that address is too large for the service. Use a smaller image."
        : "This file is too large to send. Choose a smaller photo.");
    case "IMAGE_TOO_LARGE":
      return plain("This image has too many pixels for the service. Choose a smaller photo.");
    case "UNKNOWN_MODEL":
      return plain(`The model ${model} is no longer available. The list of models has been refreshed: choose another one.`);
    case "UNKNOWN_VERSION":
      return plain(`That version of ${model} is no longer available. The list of models has been refreshed.`);
    case "FORBIDDEN_SOURCE":
      if (context.source === "gcs") {
        return plain("The service is not allowed to read images from that bucket. Upload the photo instead, "
                     + "or use a bucket this deployment allows.");
      }
      return plain("The service does not fetch images from that address. Save the image and upload it instead.");
    case "OBJECT_NOT_FOUND":
      return plain("There is no image at that address. Check the bucket and object name.");
    case "URL_FETCH_FAILED":
      return plain("The image at that address could not be downloaded. Check the link, or save the image and "
                   + "upload it instead.", true);
    case "INVALID_URL":
      return plain("That is not an address the page can use. Enter an https:// link or a gs://bucket/object URI.");
    case "MISSING_ADDRESS":
      return plain("Enter an https:// link or a gs://bucket/object URI first.");
    case "NETWORK_ERROR":
      return plain("The service could not be reached, even after several tries. Check your connection, "
                   + "then try again.", true);
    case "INTEGRITY_ERROR":
    case "ARCHITECTURE_UNAVAILABLE":
      return plain(`The model ${model} cannot be run because of a problem on the server. `
                   + "Choose another model; the problem has been logged.");
    default:
      break;
  }
  if (status === 429) {
    return plain("Too many requests: the quota for this service has been used up for now. "
                 + "Wait a minute, then try again.", true);
  }
  if (code === "API_KEY_REFUSED" || status === 401 || status === 403) {
    return plain("The service did not accept this page's API key. Whoever deployed the page needs to check its "
                 + "configuration.");
  }
  if (status === 503 || status === 502 || status === 504) {
    return plain("The service is unavailable right now, even after several tries. Please try again in a minute.",
                 true);
  }
  if (status === 413) return plain("This file is too large to send. Choose a smaller photo.");
  if (status === 400) return plain("The service did not understand the request. Reload the page and try again.");
  if (status >= 500) return plain("Something went wrong on the server. Try again; the problem has been logged.", true);
  return plain(`Something went wrong${status ? ` (error ${status})` : ""}. Please try again.`, true);
}

/**
 * The sentence shown while the client waits before an automatic retry.
 *
 * @param {{attempt: number, maxRetries: number, delaySeconds: number, error: {status: number}}} notice
 * @returns {string}
 */
export function retrySentence({attempt, maxRetries, delaySeconds, error}) {
  const why = error.status === 0 ? "The service could not be reached"
    : "The service is warming up or briefly unavailable";
  const seconds = delaySeconds === 1 ? "1 second" : `${Math.round(delaySeconds)} seconds`;
  return `${why}. Trying again in ${seconds} (attempt ${attempt} of ${maxRetries})…`;
}
