// The OpenAI-compatible /v1 API as the page uses it: errors a person can act on, the model
// list, the server-sent-event stream reader, and a conversation as Chat Completions messages.

// Relative, so the UI also works when the server sits behind a path prefix.
export const API = "v1";

// ---------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------

export function headers(apiKey, json = false) {
  const out = {};
  if (json) out["Content-Type"] = "application/json";
  if (apiKey) out.Authorization = `Bearer ${apiKey}`;
  return out;
}

/** An error a person can act on, built from a non-200 response (OpenAI's error envelope). */
export class APIError extends Error {
  constructor(message, { detail = "", status = 0, action = null } = {}) {
    super(message); // the headline
    this.detail = detail; // the server's own words, when the headline is ours
    this.status = status;
    this.action = action; // "settings" when changing the API key is the fix
  }

  /** Headline and detail as one line; the server's sentences often end in a full stop already. */
  get text() {
    if (!this.detail) return this.message;
    return /[.!?]$/.test(this.message) ? `${this.message} ${this.detail}` : `${this.message}. ${this.detail}`;
  }
}

export async function responseError(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = body?.error?.message ?? "";
  } catch {
    // not JSON (a proxy's HTML page, say): fall back to the status line below
  }
  detail = detail || `${response.status} ${response.statusText}`.trim();
  if (response.status === 429) {
    const wait = retryAfterSeconds(response.headers.get("retry-after"));
    const when = wait === null ? "retry shortly" : `retry in ${wait} s`;
    return new APIError(`Rate limit reached — ${when}`, { detail, status: 429 });
  }
  if (response.status === 401) {
    return new APIError(detail, { detail: "Check the API key in Settings.", status: 401, action: "settings" });
  }
  return new APIError(detail, { status: response.status });
}

// Retry-After is either delta-seconds or an HTTP date (RFC 9110 §10.2.3).
function retryAfterSeconds(value) {
  if (!value) return null;
  if (/^\s*\d+(\.\d+)?\s*$/.test(value)) return Math.ceil(Number(value));
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

export async function fetchModels(apiKey) {
  const response = await fetch(`${API}/models`, { headers: headers(apiKey) });
  if (!response.ok) throw await responseError(response);
  const body = await response.json();
  return Array.isArray(body.data) ? body.data : [];
}

/**
 * Yield the data payloads of a data-only server-sent-event stream ("data: {...}" lines,
 * events separated by a blank line). fetch + ReadableStream rather than EventSource, because
 * EventSource can neither POST a body nor send an Authorization header.
 */
export async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + value).replace(/\r\n?/g, "\n"); // SSE allows CRLF and CR line ends too
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
          .join("\n");
        if (data) yield data;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** The conversation as Chat Completions messages (failed, empty replies are left out). */
export function apiMessages(conv) {
  const out = [];
  if (conv.system.trim()) out.push({ role: "system", content: conv.system });
  for (const m of conv.messages) {
    if (m.role === "user") {
      const images = (m.images ?? []).filter(Boolean); // null: dropped when storage was full
      if (!images.length) {
        out.push({ role: "user", content: m.content });
      } else {
        // Images first, then the question: the order the model saw images in training.
        const parts = images.map((url) => ({ type: "image_url", image_url: { url } }));
        if (m.content) parts.push({ type: "text", text: m.content });
        out.push({ role: "user", content: parts });
      }
    } else if (m.role === "assistant" && m.content) {
      out.push({ role: "assistant", content: m.content });
    }
  }
  return out;
}
