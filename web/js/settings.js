/**
 * The deploy-time configuration: `config.js` (a classic script loaded before the modules)
 * sets `window.IMGCLASSIFY_CONFIG = {apiBase, apiKey}`. Missing or malformed values fall back
 * to the local stack: same origin, no key.
 */

/**
 * @typedef {object} Config
 * @property {string} apiBase API root without a trailing slash; "" means the page's own origin.
 * @property {string} apiKey  sent as `x-api-key` when not empty (API Gateway keys).
 */

/**
 * Read and normalise the configuration.
 *
 * @param {unknown} [source] defaults to `globalThis.IMGCLASSIFY_CONFIG`
 * @returns {Readonly<Config>}
 */
export function readConfig(source = globalThis.IMGCLASSIFY_CONFIG) {
  const raw = source && typeof source === "object" ? /** @type {Record<string, unknown>} */ (source) : {};
  let apiBase = typeof raw.apiBase === "string" ? raw.apiBase.trim().replace(/\/+$/, "") : "";
  if (apiBase && !/^https?:\/\//i.test(apiBase)) {
    console.warn(`config.js: apiBase ${JSON.stringify(apiBase)} is not an http(s) URL; using this page's origin`);
    apiBase = "";
  }
  const apiKey = typeof raw.apiKey === "string" ? raw.apiKey.trim() : "";
  return Object.freeze({apiBase, apiKey});
}
