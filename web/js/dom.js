/**
 * A tiny element builder. Text always goes in as text nodes, never as HTML, so labels and
 * messages from the API cannot inject markup.
 */

/**
 * Create an element with attributes and children.
 *
 * `props.class` sets the class name, `props.text` the text content, `on<event>` adds a
 * listener; `true` sets a boolean attribute and `null`, `undefined` or `false` leave it out.
 *
 * @param {string} tag
 * @param {Record<string, unknown>} [props]
 * @param {...(Node|string|null|undefined|false|Array<Node|string>)} children
 * @returns {HTMLElement}
 */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") element.className = String(value);
    else if (key === "text") element.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

/**
 * Replace every child of `parent` with `children`.
 *
 * @param {Element} parent
 * @param {...(Node|string)} children
 */
export function replaceChildren(parent, ...children) {
  parent.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
}
