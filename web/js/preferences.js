/**
 * What this browser remembers between visits: the chosen model and how many labels to show.
 * Kept in localStorage, so each person's choice stays in their own browser and is sent with
 * each of their requests; nothing is shared through the server. Falls back to memory when
 * storage is unavailable (private windows, storage disabled).
 */

const MODEL_KEY = "imgclassify.model";
const TOP_K_KEY = "imgclassify.topK";
export const TOP_K_CHOICES = [1, 3, 5, 10];
const DEFAULT_TOP_K = 5;

const memory = new Map();

function storage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // reading localStorage itself throws when storage is blocked
  }
}

function read(key) {
  try {
    const value = storage()?.getItem(key);
    if (value !== null && value !== undefined) return value;
  } catch {
    // fall through to memory
  }
  return memory.get(key) ?? null;
}

function write(key, value) {
  memory.set(key, value);
  try {
    storage()?.setItem(key, value);
  } catch {
    // quota or privacy mode: the in-memory copy keeps this visit consistent
  }
}

/**
 * The model this browser chose last time, or null.
 *
 * @returns {string|null}
 */
export function rememberedModel() {
  return read(MODEL_KEY);
}

/**
 * Remember `name` as this browser's model.
 *
 * @param {string} name
 */
export function rememberModel(name) {
  write(MODEL_KEY, name);
}

/**
 * How many labels to ask for: the remembered choice if it is one of TOP_K_CHOICES, else 5.
 *
 * @returns {number}
 */
export function rememberedTopK() {
  const value = Number(read(TOP_K_KEY));
  return TOP_K_CHOICES.includes(value) ? value : DEFAULT_TOP_K;
}

/**
 * Remember how many labels to show.
 *
 * @param {number} topK
 */
export function rememberTopK(topK) {
  write(TOP_K_KEY, String(topK));
}

/**
 * The model to select: the remembered one if it is still listed, else the service's default,
 * else the first listed. `fellBack` tells whether a remembered choice had to be dropped.
 *
 * @param {{name: string}[]} models
 * @param {string|null} remembered
 * @param {string|null|undefined} defaultName
 * @returns {{name: string|null, fellBack: boolean}}
 */
export function pickModel(models, remembered, defaultName) {
  const names = models.map((model) => model.name);
  if (remembered && names.includes(remembered)) return {name: remembered, fellBack: false};
  const name = defaultName && names.includes(defaultName) ? defaultName : (names[0] ?? null);
  return {name, fellBack: Boolean(remembered)};
}
