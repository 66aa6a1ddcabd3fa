// What the page remembers: conversations, settings and the API key in localStorage, and the
// live state of the page (models, pending attachments, replies in flight).

export const STORAGE = {
  conversations: "opengpt4.conversations",
  current: "opengpt4.current",
  settings: "opengpt4.settings",
  apiKey: "opengpt4.apiKey",
};

// ---------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------

function load(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback; // corrupt or unavailable storage must not keep the page from starting
  }
}

export function store(key, value) {
  localStorage.setItem(key, JSON.stringify(value));
}

// localStorage holds ~5 MB, and attached images are stored as data: URLs, so a few photos
// can fill it. Rather than lose the whole history, retry without image data and say so.
// Returns a warning for the person when something could not be kept, else null.
export function persistConversations() {
  try {
    store(STORAGE.conversations, state.conversations);
    return null;
  } catch {
    const stripped = state.conversations.map((c) => ({
      ...c,
      messages: c.messages.map((m) => (m.images?.length ? { ...m, images: m.images.map(() => null) } : m)),
    }));
    try {
      store(STORAGE.conversations, stripped);
      return "Browser storage is full: images in your conversations will not be kept after a reload.";
    } catch {
      return "Browser storage is full: this conversation will not be kept after a reload.";
    }
  }
}

// What a new visitor gets. At temperature 1 with no cap on the reply a small model rambles, and
// on a CPU one answer could stream for minutes; both stay editable in the toolbar.
export const DEFAULT_SETTINGS = { model: null, temperature: 0.7, maxTokens: 512 };
const SETTINGS_VERSION = 2;

function loadSettings() {
  const saved = { ...load(STORAGE.settings, {}) };
  // Before version 2 the page saved the whole settings object as soon as it picked a model, so
  // the old defaults (temperature 1, no max tokens) sit in nearly every browser without anyone
  // having chosen them: read those as "not chosen" so the new defaults reach existing users too.
  if (!(saved.version >= SETTINGS_VERSION)) {
    if (saved.temperature === 1) delete saved.temperature;
    if (saved.maxTokens === null) delete saved.maxTokens;
  }
  return { ...DEFAULT_SETTINGS, ...saved, version: SETTINGS_VERSION };
}

export function saveSettings() {
  store(STORAGE.settings, state.settings);
}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------

export const state = {
  conversations: load(STORAGE.conversations, []), // [{id, title, system, messages, updated}]
  currentId: load(STORAGE.current, null),
  settings: loadSettings(), // {model, temperature, maxTokens (null: no limit), version}
  apiKey: localStorage.getItem(STORAGE.apiKey) || "",
  models: [], // model objects from GET /v1/models (may carry pricing, context_length, accepts_images)
  modelsError: null, // the APIError that kept the model list from loading (a wrong key, say), else null
  pending: [], // images attached in the composer, as data: URLs, not sent yet
  streams: new Map(), // conversation id -> AbortController of its in-flight reply
};

// Ids only need to be unique within this browser; crypto.randomUUID is missing on plain-http
// pages served to other machines (not a "secure context"), so do not depend on it.
export function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}

export function current() {
  return state.conversations.find((c) => c.id === state.currentId) ?? null;
}

export function selectedModel() {
  return state.models.find((m) => m.id === state.settings.model) ?? null;
}
