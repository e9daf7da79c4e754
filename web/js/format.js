/** Numbers as people read them: percentages, durations, byte counts, dimensions. */

/**
 * A probability as a percentage with one decimal ("36.7%"); tiny non-zero scores read "<0.1%".
 *
 * @param {number} score between 0 and 1
 * @returns {string}
 */
export function percent(score) {
  const value = Math.max(0, Math.min(1, Number(score) || 0)) * 100;
  if (value > 0 && value < 0.05) return "<0.1%";
  return `${value.toFixed(1)}%`;
}

/**
 * A duration: "48 ms" below a second, "1.2 s" above.
 *
 * @param {number} ms
 * @returns {string}
 */
export function duration(ms) {
  const value = Math.max(0, Number(ms) || 0);
  return value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(1)} s`;
}

/**
 * A byte count in decimal units: "812 bytes", "38 kB", "4.1 MB".
 *
 * @param {number} count
 * @returns {string}
 */
export function byteSize(count) {
  const value = Math.max(0, Number(count) || 0);
  if (value < 1000) return `${value} bytes`;
  if (value < 1e6) return `${value < 1e4 ? (value / 1e3).toFixed(1) : Math.round(value / 1e3)} kB`;
  return `${(value / 1e6).toFixed(1)} MB`;
}

/**
 * Width and height as "4032 × 3024".
 *
 * @param {number} width
 * @param {number} height
 * @returns {string}
 */
export function dimensions(width, height) {
  return `${width} × ${height}`;
}
