// The opengpt4 web chat: plain ES modules (this one, api.js, dom.js, state.js, markdown.js), no
// build step, no network access beyond the server it was loaded from; the two libraries it uses
// (marked, DOMPurify) are vendored in vendor/. It speaks the same OpenAI-compatible /v1 API as
// any other client, so everything it does can be reproduced with the `openai` package.
//
// Safety rule for the whole file: user text and everything else reach the page as text nodes
// (textContent / append(string)); nothing here assigns innerHTML. The one exception is an
// assistant reply, which markdown.js renders and sanitizes with DOMPurify on every render.

import { API, APIError, apiMessages, fetchModels, headers, responseError, sseData } from "./api.js";
import { $, copyText, h, icon } from "./dom.js";
import { flash, renderMarkdown } from "./markdown.js";
import { current, newId, persistConversations, saveSettings, selectedModel, state, STORAGE, store } from "./state.js";

const MAX_IMAGE_BYTES = 20 * 1024 * 1024; // OpenAI's own per-image limit
const TITLE_LENGTH = 48;

function saveConversations() {
  const warning = persistConversations();
  if (warning) showNotice(warning);
}

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumSignificantDigits: 3 });

/** USD for one reply, or null when the model has no pricing (pricing is USD per 1k tokens). */
function cost(usage, model) {
  const p = model?.pricing;
  if (!usage || !p || typeof p.prompt !== "number" || typeof p.completion !== "number") return null;
  return (usage.prompt_tokens * p.prompt + usage.completion_tokens * p.completion) / 1000;
}

function usageText(m) {
  if (!m.usage) return "";
  const u = m.usage;
  let text = `${u.prompt_tokens} prompt + ${u.completion_tokens} completion = ${u.total_tokens} tokens`;
  // The model object of the time, not the current one: pricing is recorded with the reply.
  const usd = cost(u, m.pricing ? { pricing: m.pricing } : null);
  if (usd !== null) text += ` · ${money.format(usd)}`;
  return text;
}

function statusText(m) {
  if (m.status === "stopped") return "Stopped";
  if (m.finish_reason === "length") return "Cut off at the token limit";
  return "";
}

function renderMessage(m) {
  const isUser = m.role === "user";
  const label = isUser ? "You" : (m.model ?? "assistant");
  const streaming = m.status === "streaming";
  const body = h("div", { class: "msg-body" });
  if (isUser && m.images?.length) {
    const gallery = h("div", { class: "msg-images" });
    for (const url of m.images) {
      gallery.append(url ? h("img", { src: url, alt: "Attached image" }) : h("span", { class: "img-missing" }, "image not saved"));
    }
    body.append(gallery);
  }
  // The person's own words stay exactly as typed; the model's are Markdown.
  const content = h("div", { class: isUser ? "msg-content" : "msg-content markdown" });
  if (isUser) content.append(m.content);
  else renderMarkdown(content, m.content);
  body.append(content);
  if (m.error) {
    body.append(h("div", { class: "msg-error", role: "alert" },
      h("div", { class: "msg-error-text" },
        h("strong", {}, m.error),
        m.errorDetail ? h("span", { class: "msg-error-detail" }, m.errorDetail) : null),
      m.errorAction === "settings" ? h("button", { type: "button", class: "btn btn-small", onclick: openSettings }, "Open settings") : null,
      h("button", { type: "button", class: "btn btn-small", onclick: () => askAgain(m) }, "Retry")));
  }
  // Regenerate only the last reply: replacing one further up would leave the turns after it
  // answering a question that is no longer there. A failed reply has its own Retry instead.
  const last = current()?.messages.at(-1) === m;
  const actions = h("div", { class: "msg-actions" },
    m.content && !streaming ? actionButton("copy", "Copy", "Copy reply", "Copy the reply as Markdown", async (e) => {
      const button = e.currentTarget;
      flash(button, (await copyText(m.content)) ? "Copied" : "Copy failed");
    }) : null,
    last && !streaming && m.status !== "error" ? actionButton("regenerate", "Regenerate", "Regenerate reply", "Ask again for a new reply", () => askAgain(m)) : null);
  const meta = h("div", { class: "msg-meta" },
    actions,
    h("span", { class: "msg-status" }, statusText(m)),
    h("span", { class: "msg-usage" }, usageText(m)));
  return h("article", { class: `msg ${m.role}`, "data-id": m.id, "data-status": m.status ?? "done" },
    h("div", { class: "msg-role" }, label), body, isUser ? null : meta);
}

// The accessible name starts with the visible word, so "click Regenerate" works by voice too.
function actionButton(iconName, label, name, title, onclick) {
  return h("button", { type: "button", class: "msg-action", title, "aria-label": name, onclick },
    icon(iconName), h("span", {}, label));
}

/** Re-render one message in place (streaming updates use scheduleContent instead). */
function updateMessage(m) {
  const old = $("message-list").querySelector(`[data-id="${m.id}"]`);
  if (old) old.replaceWith(renderMessage(m));
}

// While a reply streams, its Markdown is rendered again from the whole text so far (a code fence
// that opens mid-reply has to turn the lines after it into a code block), but at most once per
// animation frame: more often than the screen repaints would only parse text nobody sees.
const unrendered = new Set();

function scheduleContent(m) {
  if (unrendered.has(m)) return;
  unrendered.add(m);
  requestAnimationFrame(() => {
    unrendered.delete(m);
    const el = $("message-list").querySelector(`[data-id="${m.id}"] .msg-content`);
    if (!el) return; // another conversation is on screen; the text is still recorded in m
    const messages = $("messages");
    const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
    renderMarkdown(el, m.content);
    if (atBottom) messages.scrollTop = messages.scrollHeight;
  });
}

function renderMessages() {
  const conv = current();
  const list = $("message-list");
  list.replaceChildren(...(conv?.messages ?? []).map(renderMessage));
  $("empty").hidden = Boolean(conv?.messages.length);
  $("system").value = conv?.system ?? "";
  // Open the system box when it has content so it is never silently in effect.
  $("system-box").open = Boolean(conv?.system);
  $("messages").scrollTop = $("messages").scrollHeight;
}

function renderConversations() {
  const items = [...state.conversations]
    .filter((c) => c.messages.length || c.id === state.currentId)
    .sort((a, b) => b.updated - a.updated)
    .map((c) => h("li", { class: c.id === state.currentId ? "active" : "" },
      h("button", {
        type: "button", class: "conv-title", title: c.title || "New chat",
        "aria-current": c.id === state.currentId ? "page" : false,
        onclick: () => switchTo(c.id),
      }, c.title || "New chat"),
      h("button", {
        type: "button", class: "icon-btn icon-btn-small conv-delete", "aria-label": `Delete ${c.title || "New chat"}`,
        title: "Delete conversation", onclick: () => deleteConversation(c.id),
      }, icon("trash"))));
  $("conversations").replaceChildren(...items);
}

function renderComposer() {
  const streaming = state.streams.has(state.currentId);
  $("send").hidden = streaming;
  $("stop").hidden = !streaming;
  const images = selectedModel()?.accepts_images !== false; // absent means "unknown": allow
  $("attach").disabled = !images;
  $("file").disabled = !images;
  $("attach").title = images ? "Attach image" : "This model does not accept images";
  $("attachments").replaceChildren(...state.pending.map((url, i) => h("figure", { class: "attachment" },
    h("img", { src: url, alt: `Attachment ${i + 1}` }),
    h("button", {
      type: "button", class: "attachment-remove", "aria-label": `Remove attachment ${i + 1}`,
      onclick: () => { state.pending.splice(i, 1); renderComposer(); },
    }, icon("close")))));
}

function renderModels() {
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => h("option", { value: m.id }, m.id)));
  if (!selectedModel() && state.models.length) {
    state.settings.model = state.models[0].id;
    saveSettings();
  }
  select.value = state.settings.model ?? "";
  select.disabled = !state.models.length;
  renderModelInfo();
  renderComposer();
}

function renderModelInfo() {
  const m = selectedModel();
  const bits = [];
  if (m?.snapshot && m.snapshot !== m.id) bits.push(`→ ${m.snapshot}`); // an alias: say what it points at now
  if (m?.context_length) bits.push(`${m.context_length.toLocaleString("en-US")} tokens context`);
  if (m?.pricing) bits.push(`${money.format(m.pricing.prompt)} / ${money.format(m.pricing.completion)} per 1k tokens in / out`);
  if (m?.accepts_images === false) bits.push("text only");
  $("model-info").textContent = bits.join(" · ");
  if (m?.context_length) $("max-tokens").max = m.context_length;
  else $("max-tokens").removeAttribute("max");
}

function renderSettings() {
  const t = state.settings.temperature;
  $("temperature").value = t;
  $("temperature-range").value = t;
  $("max-tokens").value = state.settings.maxTokens ?? "";
}

function render() {
  renderConversations();
  renderMessages();
  renderComposer();
  document.title = current()?.title ? `${current().title} · opengpt4` : "opengpt4";
}

// One notice bar for problems that belong to no single reply (models failing to load, storage).
function showNotice(text, action = null) {
  $("notice-text").textContent = text;
  const button = $("notice-action");
  button.hidden = !action;
  if (action) {
    button.textContent = action.label;
    button.onclick = action.run;
  }
  $("notice").hidden = false;
}

function hideNotice() {
  $("notice").hidden = true;
}

// ---------------------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------------------

function newConversation() {
  // Reuse an untouched conversation instead of piling up empty ones.
  const empty = state.conversations.find((c) => !c.messages.length);
  const conv = empty ?? { id: newId(), title: "", system: "", messages: [], updated: Date.now() };
  if (!empty) state.conversations.push(conv);
  switchTo(conv.id);
}

function switchTo(id) {
  state.currentId = id;
  store(STORAGE.current, id);
  saveConversations();
  closeSidebar();
  render();
  $("prompt").focus();
}

function deleteConversation(id) {
  state.streams.get(id)?.abort();
  state.conversations = state.conversations.filter((c) => c.id !== id);
  saveConversations();
  if (state.currentId === id) {
    state.currentId = null;
    newConversation();
  } else {
    renderConversations();
  }
}

async function send() {
  const conv = current();
  const text = $("prompt").value;
  if (state.streams.has(conv.id)) return; // one reply at a time per conversation
  if (!text.trim() && !state.pending.length) return;
  const model = selectedModel();
  if (!model) {
    showModelsNotice();
    return;
  }
  if (state.pending.length && model.accepts_images === false) {
    showNotice(`${model.id} does not accept images: remove the attachment or pick another model.`);
    return;
  }
  conv.messages.push({ id: newId(), role: "user", content: text, images: state.pending.splice(0) });
  if (!conv.title) conv.title = titleFrom(text);
  $("prompt").value = "";
  autosize();
  await reply(conv);
}

function titleFrom(text) {
  const line = text.trim().replace(/\s+/g, " ");
  if (!line) return "Image";
  return line.length > TITLE_LENGTH ? `${line.slice(0, TITLE_LENGTH - 1)}…` : line;
}

/** Stream the assistant's answer to the conversation as it stands. */
async function reply(conv) {
  const model = selectedModel();
  const m = { id: newId(), role: "assistant", content: "", model: model.id, status: "streaming" };
  if (model.pricing) m.pricing = model.pricing; // the price at the time of the reply
  const body = {
    model: model.id,
    messages: apiMessages(conv),
    stream: true,
    stream_options: { include_usage: true },
    temperature: state.settings.temperature,
  };
  if (state.settings.maxTokens) body.max_tokens = state.settings.maxTokens;
  conv.messages.push(m);
  conv.updated = Date.now();
  const controller = new AbortController();
  state.streams.set(conv.id, controller);
  saveConversations();
  render();

  try {
    const response = await fetch(`${API}/chat/completions`, {
      method: "POST", headers: headers(state.apiKey, true), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw await responseError(response);
    let done = false;
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") { done = true; break; }
      const chunk = JSON.parse(data);
      // Once the 200 is sent the server can only report a failure inside the stream.
      if (chunk.error) throw new APIError(chunk.error.message || "The server reported an error.");
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        m.content += choice.delta.content;
        scheduleContent(m);
      }
      if (choice?.finish_reason) m.finish_reason = choice.finish_reason;
      if (chunk.usage) m.usage = chunk.usage; // the last chunk, with empty choices
    }
    if (!done) throw new APIError("The connection closed before the reply was complete.");
    m.status = "done";
  } catch (e) {
    if (e.name === "AbortError") {
      // The Stop button: the server sees the disconnect and cancels the generation.
      m.status = "stopped";
    } else {
      m.status = "error";
      m.error = e instanceof APIError ? e.message
        : e instanceof TypeError ? `Could not reach the server (${e.message})` // fetch's network failure
          : `Unexpected reply from the server (${e.message})`;
      m.errorDetail = e.detail || null;
      m.errorAction = e.action ?? null;
    }
  } finally {
    state.streams.delete(conv.id);
    conv.updated = Date.now();
    saveConversations();
    const messages = $("messages");
    const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
    updateMessage(m);
    if (atBottom) messages.scrollTop = messages.scrollHeight; // keep the usage line or error in view
    renderComposer();
    renderConversations(); // most recently active first
  }
}

function stop() {
  state.streams.get(state.currentId)?.abort();
}

/** Drop a reply (a failed one, or the last one: Regenerate) and stream a new one in its place. */
function askAgain(m) {
  const conv = current();
  if (!conv || state.streams.has(conv.id)) return;
  if (!selectedModel()) {
    showModelsNotice();
    return;
  }
  conv.messages = conv.messages.filter((x) => x !== m);
  reply(conv);
}

// --- images ------------------------------------------------------------------------------

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function attach(files) {
  if (selectedModel()?.accepts_images === false) {
    showNotice(`${selectedModel().id} does not accept images.`);
    return;
  }
  for (const file of files) {
    if (!file.type.startsWith("image/")) {
      showNotice(`${file.name || "That file"} is not an image.`);
      continue;
    }
    if (file.size > MAX_IMAGE_BYTES) {
      showNotice(`${file.name || "The image"} is larger than 20 MB.`);
      continue;
    }
    state.pending.push(await readAsDataURL(file));
  }
  renderComposer();
  $("prompt").focus();
}

// --- settings ----------------------------------------------------------------------------

function openSettings() {
  $("api-key").value = state.apiKey;
  $("settings").returnValue = ""; // Esc must not count as the previous dialog's "save"
  $("settings").showModal();
  $("api-key").focus();
}

async function loadModels() {
  try {
    state.models = await fetchModels(state.apiKey);
    state.modelsError = null;
    hideNotice();
  } catch (e) {
    state.models = [];
    state.modelsError = e instanceof APIError ? e : new APIError(`Could not reach the server (${e.message})`);
    showModelsNotice();
  }
  renderModels();
}

// Why nothing can be sent. The server's own words when it gave any (a wrong key: which key, and
// how to get one), also when the person tries to send later: a generic line in their place
// would hide the one thing that says what to fix.
function showModelsNotice() {
  const e = state.modelsError;
  if (!e) {
    showNotice("No model is available. Check that the server is running and the API key in Settings.",
      { label: "Open settings", run: openSettings });
    return;
  }
  showNotice(`Could not load the model list: ${e.text}`,
    e.status === 401 ? { label: "Open settings", run: openSettings } : { label: "Retry", run: loadModels });
}

// --- layout ------------------------------------------------------------------------------

function autosize() {
  const prompt = $("prompt");
  prompt.style.height = "auto";
  prompt.style.height = `${Math.min(prompt.scrollHeight, 240)}px`;
}

function closeSidebar() {
  $("app").classList.remove("sidebar-open");
  $("scrim").hidden = true;
}

// ---------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------

function wire() {
  for (const el of document.querySelectorAll("[data-icon]")) el.replaceWith(icon(el.dataset.icon));

  $("new-chat").addEventListener("click", newConversation);
  $("open-settings").addEventListener("click", openSettings);
  $("toggle-sidebar").addEventListener("click", () => {
    $("app").classList.add("sidebar-open");
    $("scrim").hidden = false;
  });
  $("scrim").addEventListener("click", closeSidebar);

  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("stop").addEventListener("click", stop);
  $("prompt").addEventListener("input", autosize);
  $("prompt").addEventListener("keydown", (e) => {
    // Enter sends, Shift+Enter is a newline; never send in the middle of an IME composition.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.streams.has(state.currentId) && !$("settings").open) stop();
  });

  $("attach").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", async (e) => {
    await attach([...e.target.files]);
    e.target.value = ""; // so choosing the same file again still fires "change"
  });
  // Paste an image (a screenshot, say) straight into the message box; text pastes as usual.
  $("prompt").addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files ?? [])].filter((f) => f.type.startsWith("image/"));
    if (files.length) {
      e.preventDefault();
      attach(files);
    }
  });
  $("composer-box").addEventListener("dragover", (e) => { e.preventDefault(); });
  $("composer-box").addEventListener("drop", (e) => {
    e.preventDefault();
    attach([...e.dataTransfer.files]);
  });

  $("system").addEventListener("input", () => {
    const conv = current();
    conv.system = $("system").value;
    saveConversations();
  });

  $("model").addEventListener("change", () => {
    state.settings.model = $("model").value;
    saveSettings();
    renderModelInfo();
    renderComposer();
  });
  // The slider and the number box are one setting; clamp so a typed 5 cannot reach the API.
  const setTemperature = (value) => {
    const t = Math.min(2, Math.max(0, Number(value)));
    if (Number.isNaN(t) || value === "") return;
    state.settings.temperature = t;
    saveSettings();
    $("temperature-range").value = t;
  };
  $("temperature-range").addEventListener("input", (e) => { setTemperature(e.target.value); $("temperature").value = e.target.value; });
  $("temperature").addEventListener("input", (e) => setTemperature(e.target.value));
  $("temperature").addEventListener("change", renderSettings);
  $("max-tokens").addEventListener("input", (e) => {
    const n = Number.parseInt(e.target.value, 10);
    state.settings.maxTokens = n > 0 ? n : null; // empty: let the server use the context that is left
    saveSettings();
  });

  $("notice-close").addEventListener("click", hideNotice);
  $("cancel-settings").addEventListener("click", () => $("settings").close("cancel"));
  $("settings").addEventListener("close", () => {
    if ($("settings").returnValue !== "save") return;
    state.apiKey = $("api-key").value.trim();
    if (state.apiKey) localStorage.setItem(STORAGE.apiKey, state.apiKey);
    else localStorage.removeItem(STORAGE.apiKey);
    loadModels(); // a new key can change which models we may see
  });
}

function init() {
  wire();
  renderSettings();
  // A reply interrupted by a reload cannot resume; show it as stopped rather than spinning.
  for (const conv of state.conversations) {
    for (const m of conv.messages) if (m.status === "streaming") m.status = "stopped";
  }
  if (!current()) newConversation();
  else render();
  loadModels();
}

init();
