/**
 * Make big photos small before they are uploaded.
 *
 * The service resizes every image so its shorter side is a little larger than the model's
 * input (resize then centre-crop; for EfficientNet-Lite2, 297 px then 260 px). A 12-megapixel
 * phone photo is 4032 × 3024: sending it whole moves megabytes the service throws away. The
 * page keeps the shorter side at HEADROOM times the largest model input (2 × 260 = 520 px for
 * the bundled models), which covers any usual resize-to-crop ratio and leaves the service's
 * own resize as the step that makes the model's pixels, so the labels match those of the
 * original. Smaller images, and files this browser cannot decode (which the service may
 * still read, e.g. TIFF), are sent untouched.
 */

/** How many times the largest model input the shorter side keeps. */
export const HEADROOM = 2;
const JPEG_QUALITY = 0.9;

/**
 * @typedef {object} PreparedImage
 * @property {Blob} blob        what to upload
 * @property {string} type      its content type
 * @property {boolean} resized  whether the page made it smaller
 * @property {number} bytes     size of `blob`
 * @property {number} originalBytes
 * @property {number|null} width   width of what is sent (null: the browser cannot decode it)
 * @property {number|null} height
 * @property {number|null} originalWidth
 * @property {number|null} originalHeight
 */

/**
 * The shorter side uploads are reduced to, for these models: HEADROOM × the largest input side.
 * 0 means "do not resize" (no model lists an input size).
 *
 * @param {{input_size?: number[]}[]} models
 * @returns {number}
 */
export function uploadShortSide(models) {
  const sides = models.flatMap((model) => (Array.isArray(model.input_size) ? model.input_size.slice(1) : []))
    .map(Number).filter((side) => Number.isFinite(side) && side > 0);
  return sides.length ? Math.ceil(Math.max(...sides) * HEADROOM) : 0;
}

/**
 * Size of `width` × `height` scaled so the shorter side is `shortSide` (never enlarged).
 *
 * @param {number} width
 * @param {number} height
 * @param {number} shortSide
 * @returns {{width: number, height: number}}
 */
export function scaledSize(width, height, shortSide) {
  const scale = Math.min(1, shortSide / Math.min(width, height));
  return {width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale))};
}

function canvasOf(width, height) {
  if (typeof OffscreenCanvas === "function") return new OffscreenCanvas(width, height);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

function encode(canvas, type, quality) {
  if ("convertToBlob" in canvas) return canvas.convertToBlob({type, quality});
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("canvas could not be encoded"))), type, quality);
  });
}

/**
 * Draw `source` at `width` × `height`, halving step by step first: one big jump with bilinear
 * filtering skips pixels and aliases, repeated halving averages them all.
 */
function drawScaled(source, sourceWidth, sourceHeight, width, height) {
  let current = source;
  let currentWidth = sourceWidth;
  let currentHeight = sourceHeight;
  while (currentWidth / 2 >= width && currentHeight / 2 >= height) {
    const half = canvasOf(Math.round(currentWidth / 2), Math.round(currentHeight / 2));
    const context = half.getContext("2d");
    context.imageSmoothingQuality = "high";
    context.drawImage(current, 0, 0, half.width, half.height);
    current = half;
    currentWidth = half.width;
    currentHeight = half.height;
  }
  const canvas = canvasOf(width, height);
  const context = canvas.getContext("2d");
  // Transparent pixels become white, as the service composites them (README, "Images").
  context.fillStyle = "#ffffff";
  context.fillRect(0, 0, width, height);
  context.imageSmoothingQuality = "high";
  context.drawImage(current, 0, 0, width, height);
  return canvas;
}

/**
 * Prepare `file` for upload: shrink it to `shortSide` on its shorter side if it is larger
 * (re-encoded as JPEG, EXIF orientation applied), else keep its bytes.
 *
 * @param {Blob} file
 * @param {number} shortSide target shorter side in pixels; 0 keeps every image as it is
 * @returns {Promise<PreparedImage>}
 */
export async function prepareImage(file, shortSide) {
  const original = {blob: file, type: file.type || "application/octet-stream", resized: false, bytes: file.size,
                    originalBytes: file.size, width: null, height: null, originalWidth: null, originalHeight: null};
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, {imageOrientation: "from-image"});
  } catch {
    return original; // not decodable here: the service decides (and explains) what it is
  }
  try {
    const dims = {width: bitmap.width, height: bitmap.height, originalWidth: bitmap.width,
                  originalHeight: bitmap.height};
    if (!shortSide || Math.min(bitmap.width, bitmap.height) <= shortSide) return {...original, ...dims};
    const target = scaledSize(bitmap.width, bitmap.height, shortSide);
    const canvas = drawScaled(bitmap, bitmap.width, bitmap.height, target.width, target.height);
    const blob = await encode(canvas, "image/jpeg", JPEG_QUALITY);
    if (blob.size >= file.size) return {...original, ...dims}; // already compact: keep the original bytes
    return {blob, type: "image/jpeg", resized: true, bytes: blob.size, originalBytes: file.size,
            width: target.width, height: target.height, originalWidth: bitmap.width, originalHeight: bitmap.height};
  } finally {
    bitmap.close();
  }
}
