/**
 * Every way a person can hand the page an image: the file picker, the phone camera, drag and
 * drop (files, or an image dragged from another page), paste, and a typed https:// or gs://
 * address. Each ends in one callback with an ImageSource; this module does nothing else.
 */

/**
 * @typedef {{kind: "file", file: File, name: string, via: "picker"|"camera"|"drop"|"paste"}
 *   | {kind: "gcs", gcsUri: string, name: string}
 *   | {kind: "url", url: string, name: string}} ImageSource
 */

/**
 * Read a typed address: `gs://bucket/object` or an `http(s)://` URL; null for anything else.
 *
 * @param {string} text
 * @returns {ImageSource|null}
 */
export function parseAddress(text) {
  const value = String(text ?? "").trim();
  const gcs = /^gs:\/\/([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])\/(.+)$/i.exec(value);
  if (gcs) return {kind: "gcs", gcsUri: value, name: value};
  if (/^https?:\/\//i.test(value)) {
    try {
      const url = new URL(value);
      if (url.hostname) return {kind: "url", url: url.href, name: url.href};
    } catch {
      // not a URL after all
    }
  }
  return null;
}

function isEditable(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || target.matches("input:not([type=file]), textarea, select"));
}

function firstFile(dataTransfer) {
  if (!dataTransfer) return null;
  const files = [...(dataTransfer.files ?? [])];
  if (!files.length && dataTransfer.items) {
    for (const item of dataTransfer.items) {
      if (item.kind === "file") {
        const file = item.getAsFile();
        if (file) files.push(file);
      }
    }
  }
  return files.find((file) => file.type.startsWith("image/")) ?? files[0] ?? null;
}

function droppedAddress(dataTransfer) {
  const list = dataTransfer?.getData("text/uri-list") || dataTransfer?.getData("text/plain") || "";
  const line = list.split(/\r?\n/).find((entry) => entry && !entry.startsWith("#"));
  return line ? parseAddress(line) : null;
}

function carriesSomething(dataTransfer) {
  const types = [...(dataTransfer?.types ?? [])];
  return types.includes("Files") || types.includes("text/uri-list");
}

/**
 * Wire the inputs. `onImage` receives each image given; `onBadAddress` the text of an address
 * that is neither https:// nor gs://.
 *
 * @param {object} elements
 * @param {HTMLInputElement} elements.fileInput
 * @param {HTMLInputElement} elements.cameraInput
 * @param {HTMLElement} elements.dropZone
 * @param {HTMLFormElement} elements.sourceForm
 * @param {HTMLInputElement} elements.sourceInput
 * @param {object} handlers
 * @param {(source: ImageSource) => void} handlers.onImage
 * @param {(text: string) => void} handlers.onBadAddress
 * @param {Document} [doc]
 */
export function bindImageInputs({fileInput, cameraInput, dropZone, sourceForm, sourceInput},
                                {onImage, onBadAddress}, doc = document) {
  for (const [input, via] of [[fileInput, "picker"], [cameraInput, "camera"]]) {
    input.addEventListener("change", () => {
      const file = input.files?.[0];
      if (file) onImage({kind: "file", file, name: file.name || "photo", via});
      input.value = ""; // choosing the same file again must fire "change" again
    });
  }

  sourceForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = sourceInput.value.trim();
    const source = parseAddress(text);
    if (source) onImage(source);
    else onBadAddress(text);
  });

  // Drops are accepted anywhere on the page (a near miss must not navigate away to the file);
  // the drop zone lights up while something droppable is over the window.
  let depth = 0;
  const setDragging = (on) => dropZone.classList.toggle("dragging", on);
  doc.addEventListener("dragenter", (event) => {
    if (!carriesSomething(event.dataTransfer)) return;
    depth += 1;
    setDragging(true);
  });
  doc.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) setDragging(false);
  });
  doc.addEventListener("dragover", (event) => {
    if (!carriesSomething(event.dataTransfer) || (isEditable(event.target) && !event.dataTransfer.types.includes("Files"))) {
      return;
    }
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  doc.addEventListener("drop", (event) => {
    depth = 0;
    setDragging(false);
    const file = firstFile(event.dataTransfer);
    if (file) {
      event.preventDefault();
      onImage({kind: "file", file, name: file.name || "dropped image", via: "drop"});
      return;
    }
    if (isEditable(event.target)) return; // dropping text into the address field types it
    const address = droppedAddress(event.dataTransfer);
    if (address) {
      event.preventDefault();
      sourceInput.value = address.name;
      onImage(address);
    }
  });
  doc.addEventListener("dragend", () => {
    depth = 0;
    setDragging(false);
  });

  doc.addEventListener("paste", (event) => {
    const file = firstFile(event.clipboardData);
    if (file) {
      event.preventDefault();
      onImage({kind: "file", file, name: file.name && file.name !== "image.png" ? file.name : "pasted image",
               via: "paste"});
      return;
    }
    if (isEditable(event.target)) return; // ordinary text paste into a field
    const address = parseAddress(event.clipboardData?.getData("text/plain") ?? "");
    if (address) {
      event.preventDefault();
      sourceInput.value = address.name;
      onImage(address);
    }
  });
}
