// Assistant replies as Markdown: parsed by marked, then sanitized by DOMPurify on every render,
// including each re-render while a reply streams in. This is the one module that turns strings
// into markup; everything else on the page only makes text nodes.
//
// Three rules on top of the libraries' own:
// - HTML the model writes is shown as text, not interpreted (`<b>` in a reply reads as `<b>`):
//   the model is not a trusted author, and a chat reply has no need of raw HTML.
// - Images are shown as links: the page fetches nothing but its own server, and a reply must
//   not make the browser call an address of the model's choosing.
// - Only the tags and attributes Markdown produces survive sanitizing; links open in a new tab
//   without handing the page to it (rel=noopener).

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";
import { copyText, h, icon } from "./dom.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHTML = (s) => String(s).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  gfm: true,
  // Small models write single newlines meaning line breaks; keep them, as the plain-text view did.
  breaks: true,
  renderer: {
    html({ text, block }) {
      const shown = escapeHTML(text.replace(/\n+$/, "")).replaceAll("\n", "<br>");
      return block ? `<p>${shown}</p>\n` : shown;
    },
    image({ href, text }) {
      if (!href) return escapeHTML(text);
      return `<a href="${escapeHTML(href)}">${escapeHTML(text || href)}</a>`;
    },
  },
});

// Our own instance, so its hook does not affect anyone else's use of DOMPurify.
const purify = DOMPurify(window);
const SANITIZE = {
  ALLOWED_TAGS: ["p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "del", "a", "code", "pre",
    "blockquote", "ul", "ol", "li", "input", "table", "thead", "tbody", "tr", "th", "td"],
  // input/type/checked/disabled: the disabled checkboxes of GFM task lists ("- [x] done").
  ALLOWED_ATTR: ["href", "title", "class", "start", "align", "type", "checked", "disabled"],
  RETURN_DOM_FRAGMENT: true,
};
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

/** Replace el's children with `text` rendered as sanitized Markdown, code blocks with a copy button. */
export function renderMarkdown(el, text) {
  const fragment = purify.sanitize(marked.parse(text), SANITIZE);
  for (const pre of fragment.querySelectorAll("pre")) decorateCodeBlock(pre);
  el.replaceChildren(fragment);
}

// <pre><code class="language-x"> becomes a box with a header: the language, if the fence named
// one, and a Copy button that copies the code exactly as the model wrote it.
function decorateCodeBlock(pre) {
  const code = pre.querySelector("code");
  const lang = [...(code?.classList ?? [])].find((c) => c.startsWith("language-"))?.slice(9) ?? "";
  const button = h("button", { type: "button", class: "code-copy", "aria-label": "Copy code" }, icon("copy"), h("span", {}, "Copy"));
  button.addEventListener("click", async () => {
    // marked ends every code block with a newline the model did not put inside the fence.
    const ok = await copyText((code ?? pre).textContent.replace(/\n$/, ""));
    flash(button, ok ? "Copied" : "Copy failed");
  });
  const box = h("div", { class: "code-block" }, h("div", { class: "code-head" }, h("span", { class: "code-lang" }, lang), button));
  pre.replaceWith(box);
  box.append(pre);
}

/** Show `label` on a button with an icon and a text span for a moment, then restore it. */
export function flash(button, label) {
  const span = button.querySelector("span");
  if (!span) return;
  clearTimeout(button.flashTimer);
  button.dataset.label ??= span.textContent;
  span.textContent = label;
  button.classList.add("flashed");
  button.flashTimer = setTimeout(() => {
    span.textContent = button.dataset.label;
    button.classList.remove("flashed");
  }, 1500);
}
