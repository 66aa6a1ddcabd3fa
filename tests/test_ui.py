"""The web chat UI (src/opengpt4/serve/static/), driven in a real headless Chromium.

Each test talks to a real uvicorn server on loopback serving the tiny model; nothing on the
API side is mocked. Where a test needs a particular reply (a Markdown code block, say), a
forward hook makes the model write it token by token (scripted_replies), so it still streams
through the real engine and server. Screenshots land in test-artifacts/ at the repository root.
CI needs Debian's chromium (`apt-get install -y chromium`); Playwright's own browser
download is not used.
"""

import base64
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import torch

from opengpt4.engine.generate import Engine
from opengpt4.engine.scheduler import Scheduler
from opengpt4.serve.app import create_app
from tests.helpers import CONFIDENT_DIGITS, digit_png, live_server

CHROMIUM = Path(os.environ.get("OPENGPT4_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(f"UI tests need a Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="UI tests need the playwright package")

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 15_000  # generous: CI runs these on 2 shared cores
MAX_TOKENS = 12
CHAT_URL = re.compile(r"/v1/chat/completions$")

expect.set_options(timeout=TIMEOUT_MS)


# --- fixtures ----------------------------------------------------------------------------------
@contextmanager
def serve(app) -> Iterator[str]:
    """The app on loopback (tests/helpers.py's live_server); yields the base URL the page is served from."""
    with live_server(app) as url:
        yield url.removesuffix("/v1")


@pytest.fixture(scope="module")
def engine(tiny_model, tiny_tokenizer) -> Engine:
    assert tiny_tokenizer.tokens_per_image > 0  # the tiny model accepts images (image test)
    return Engine(tiny_model, tiny_tokenizer, pack=False)


@pytest.fixture(scope="module")
def app(engine):
    return create_app({"tiny": engine})


@pytest.fixture(scope="module")
def server(app) -> Iterator[str]:
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--headless", "--no-sandbox"])
        yield browser
        browser.close()


@contextmanager
def new_page(browser: Browser, **context_options) -> Iterator[Page]:
    """A page in a fresh browser context (its own, empty localStorage) that may use the
    clipboard; fails the test on any uncaught JavaScript exception."""
    options = {"viewport": {"width": 1180, "height": 760}, **context_options}
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"], **options)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))  # uncaught exceptions in app.js
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser) -> Iterator[Page]:
    with new_page(browser) as page:
        yield page


@contextmanager
def scripted_replies(model, tokenizer, *replies: str, seconds_per_token: float = 0) -> Iterator[None]:
    """Make the model write exactly `replies`, one per chat request, in order: a hook on the LM head
    puts all the probability on the script's next token, and each request the scheduler takes
    starts the next reply. Everything else is real (engine, scheduler, detokenizer, SSE stream,
    the page): the tiny random model cannot be prompted into a Markdown code fence, and a canned
    HTTP response would skip the streaming path. Assumes one request at a time, each prompt
    prefilled in one step (the tiny model's whole context is less than a step's prompt chunk), so
    the head runs once per generated token. seconds_per_token slows the model down, so a stream
    surely spans many of the page's animation frames."""
    scripts = [tokenizer.encode(text) + [tokenizer.im_end_id] for text in replies]
    at = {"reply": -1, "token": 0}

    def force(module, args, logits):
        script = scripts[min(at["reply"], len(scripts) - 1)]
        token = script[min(at["token"], len(script) - 1)]
        at["token"] += 1
        time.sleep(seconds_per_token)
        forced = torch.full_like(logits, -1e4)
        forced[..., token] = 1e4
        return forced

    def submit(self, *args, **kwargs):
        at["reply"], at["token"] = at["reply"] + 1, 0
        return real_submit(self, *args, **kwargs)

    real_submit = Scheduler.submit
    hook = model.lm_head.register_forward_hook(force)
    Scheduler.submit = submit
    try:
        yield
    finally:
        Scheduler.submit = real_submit
        hook.remove()


# --- helpers -----------------------------------------------------------------------------------
def open_chat(page: Page, url: str, *, temperature: str = "0", max_tokens: int | None = MAX_TOKENS,
              model: str = "tiny") -> None:
    page.goto(url + "/")
    expect(page.locator("#model")).to_have_value(model)  # the model list came from GET /v1/models
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", "" if max_tokens is None else str(max_tokens))


def send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def last_reply(page: Page, status: str | re.Pattern = "done"):
    reply = page.locator(".msg.assistant").last
    expect(reply).to_have_attribute("data-status", status)
    return reply


def chat_requests(page: Page) -> list[dict]:
    """The JSON bodies the page POSTs to /v1/chat/completions, as the server receives them."""
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if CHAT_URL.search(r.url) else None)
    return bodies


def stored_messages(page: Page) -> list[dict]:
    """The open conversation's messages as the page keeps them in localStorage (raw text)."""
    conversations = json.loads(page.evaluate("localStorage.getItem('opengpt4.conversations')"))
    current = json.loads(page.evaluate("localStorage.getItem('opengpt4.current')"))
    return next(c for c in conversations if c["id"] == current)["messages"]


def clipboard(page: Page) -> str:
    return page.evaluate("navigator.clipboard.readText()")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def png(tmp_path: Path, name: str = "shape.png") -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (96, 64), "#f4f1ea")
    draw = ImageDraw.Draw(img)
    draw.ellipse((8, 8, 56, 56), fill="#d9480f")
    draw.rectangle((60, 16, 88, 56), fill="#1c7ed6")
    path = tmp_path / name
    img.save(path)
    return path


# --- tests -------------------------------------------------------------------------------------
def test_enter_streams_a_reply_equal_to_the_apis_that_survives_a_reload(page, server, client):
    """Enter sends; the reply streams in over SSE and equals the API's answer; usage is shown."""
    bodies = chat_requests(page)
    open_chat(page, server)
    with page.expect_response(CHAT_URL) as response:
        send(page, "the cat sat on")
    assert response.value.status == 200
    assert response.value.headers["content-type"].startswith("text/event-stream")
    reply = last_reply(page)

    messages = [{"role": "user", "content": "the cat sat on"}]
    assert bodies == [{"model": "tiny", "messages": messages, "stream": True, "stream_options": {"include_usage": True},
                       "temperature": 0, "max_tokens": MAX_TOKENS}]
    direct = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=MAX_TOKENS)
    answer = direct.choices[0].message.content
    # The page shows the reply as Markdown; the text it recorded, and copies, is the API's exactly.
    assert stored_messages(page)[-1]["content"] == answer
    reply.get_by_role("button", name="Copy reply").click()
    expect(reply.get_by_role("button", name="Copy reply")).to_have_text("Copied")
    assert clipboard(page) == answer
    shown = reply.locator(".msg-content").inner_text()
    u = direct.usage
    expect(reply.locator(".msg-usage")).to_have_text(
        f"{u.prompt_tokens} prompt + {u.completion_tokens} completion = {u.total_tokens} tokens")  # no pricing: no cost
    expect(page.locator(".msg.user .msg-content")).to_have_text("the cat sat on")
    expect(page.locator(".conversations li.active")).to_have_text("the cat sat on")  # title: first user message
    expect(page.locator("#prompt")).to_have_value("")
    screenshot(page, "ui-chat.png")

    # Shift+Enter is a newline, not a send.
    page.press("#prompt", "Shift+Enter")
    expect(page.locator("#prompt")).to_have_value("\n")
    expect(page.locator(".msg.user")).to_have_count(1)

    # The conversation survives a reload (localStorage).
    page.reload()
    expect(page.locator(".msg.assistant .msg-content")).to_have_text(shown, use_inner_text=True)
    assert stored_messages(page)[-1]["content"] == answer


def test_system_message_is_sent_first_and_belongs_to_its_conversation(page, server, engine):
    """The per-conversation system message goes first in the posted messages, and the server used it."""
    bodies = chat_requests(page)
    open_chat(page, server)
    page.click("#system-box summary")
    page.fill("#system", "You are terse.")
    send(page, "seven blue birds")
    reply = last_reply(page)

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "seven blue birds"}]
    assert [b["messages"] for b in bodies] == [messages]
    prompt_tokens = len(engine.chat_prompt(messages).ids)  # with the system turn rendered in
    expect(reply.locator(".msg-usage")).to_contain_text(f"{prompt_tokens} prompt + ")

    # It belongs to the conversation: a new chat starts without one, switching back restores it.
    page.click("#new-chat")
    expect(page.locator("#system")).to_have_value("")
    page.locator(".conversations .conv-title", has_text="seven blue birds").click()
    expect(page.locator("#system")).to_have_value("You are terse.")


def test_attached_image_shows_inline_and_is_posted_as_an_image_url_part(page, server, engine, tmp_path):
    """An attached image shows inline and is posted as an image_url data: part beside the text."""
    bodies = chat_requests(page)
    open_chat(page, server)
    expect(page.locator("#attach")).to_be_enabled()  # /v1/models does not say accepts_images: false

    # Pasting an image attaches it too; the × removes it again.
    page.evaluate("""() => {
        const bytes = Uint8Array.from(atob('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=='), c => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], 'pasted.png', {type: 'image/png'}));
        document.getElementById('prompt').dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
    }""")
    expect(page.locator(".attachment img")).to_have_count(1)
    page.click(".attachment-remove")
    expect(page.locator(".attachment img")).to_have_count(0)

    path = png(tmp_path)
    data_url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    page.set_input_files("#file", str(path))
    expect(page.locator(".attachment img")).to_have_attribute("src", data_url)
    with page.expect_response(CHAT_URL) as response:
        send(page, "what shapes are in this picture?")
    assert response.value.status == 200
    reply = last_reply(page)

    expect(page.locator(".msg.user .msg-images img")).to_have_attribute("src", data_url)  # shown inline
    expect(page.locator(".attachment img")).to_have_count(0)  # the composer is cleared
    content = [{"type": "image_url", "image_url": {"url": data_url}},
               {"type": "text", "text": "what shapes are in this picture?"}]
    assert bodies[-1]["messages"] == [{"role": "user", "content": content}]
    prompt_tokens = len(engine.chat_prompt(bodies[-1]["messages"]).ids)  # image placeholders included
    expect(reply.locator(".msg-usage")).to_contain_text(f"{prompt_tokens} prompt + ")
    screenshot(page, "ui-image.png")


@pytest.fixture(scope="module")
def vision_server(vision_model) -> Iterator[str]:
    """`make run`'s default model, the shipped vision model, in float32: a bfloat16 kernel's rounding
    differs between CPUs, and the test must not depend on it."""
    with serve(create_app({vision_model.name: Engine.load(str(vision_model), "float32")})) as url:
        yield url


def test_an_attached_handwritten_digit_is_named_in_the_streamed_reply(page, vision_server, tmp_path):
    """The chat page attaches a held-out scan; the vision model's streamed reply names the digit."""
    index, digit = CONFIDENT_DIGITS[0]
    path = tmp_path / "digit.png"
    path.write_bytes(digit_png(index))
    open_chat(page, vision_server, model="smollm2-135m-vision", max_tokens=8)
    expect(page.locator("#attach")).to_be_enabled()
    page.set_input_files("#file", str(path))
    with page.expect_response(CHAT_URL) as response:
        send(page, "What digit is this?")
    assert response.value.headers["content-type"].startswith("text/event-stream")  # streamed
    reply = last_reply(page).locator(".msg-content").inner_text()
    assert re.search(rf"\b{digit}\b", reply), reply
    screenshot(page, "ui-digit.png")


def test_stop_button_aborts_generation(page, server, app, tiny_model):
    """Stop aborts the fetch; the server cancels the generation; the partial reply stays; chat goes on."""
    # Hold the model at its 6th step (prefill + 5 tokens) so the stream is surely mid-way when
    # Stop is clicked; released afterwards, an uncancelled request would run all its tokens. The
    # hook is on the LM head: the scheduler's steps go through forward_flat, not forward.
    release, forwards = threading.Event(), []

    def gate(module, args, output):
        forwards.append(1)
        if len(forwards) >= 6:
            release.wait(timeout=TIMEOUT_MS / 1000)

    hook = tiny_model.lm_head.register_forward_hook(gate)
    try:
        open_chat(page, server, max_tokens=100)  # greedy: no early end-of-text
        send(page, "hello")
        reply = page.locator(".msg.assistant").last
        expect(reply).to_have_attribute("data-status", "streaming")
        expect(reply.locator(".msg-content")).not_to_have_text("")  # tokens are arriving
        expect(page.locator("#send")).to_be_hidden()
        page.click("#stop")
        expect(reply).to_have_attribute("data-status", "stopped")
        expect(reply.locator(".msg-status")).to_have_text("Stopped")
        partial = reply.locator(".msg-content").text_content()
        release.set()
        assert app.state.schedulers["tiny"].idle.wait(5), "generation kept running after Stop"
        assert len(forwards) < 20, f"{len(forwards)} forwards for a request stopped after 5 tokens"
    finally:
        release.set()
        hook.remove()

    # Still usable: the next message gets a full reply, and the stopped one keeps its text.
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    page.fill("#max-tokens", str(MAX_TOKENS))
    send(page, "the cat sat on")
    expect(page.locator(".msg.assistant")).to_have_count(2)
    last_reply(page)
    expect(page.locator(".msg.assistant").first.locator(".msg-content")).to_have_text(partial)


def test_conversations_are_created_switched_deleted_and_kept_on_reload(page, server):
    open_chat(page, server, max_tokens=4)
    send(page, "the cat sat on")
    last_reply(page)
    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    send(page, "seven blue birds")
    last_reply(page)
    titles = page.locator(".conversations .conv-title")
    expect(titles).to_have_text(["seven blue birds", "the cat sat on"])  # most recent first

    titles.filter(has_text="the cat sat on").click()
    expect(page.locator(".msg.user .msg-content")).to_have_text(["the cat sat on"])
    page.reload()  # both conversations, and which one is open, come back from localStorage
    expect(page.locator(".msg.user .msg-content")).to_have_text(["the cat sat on"])
    expect(titles).to_have_count(2)

    page.get_by_role("button", name="Delete seven blue birds").click()
    expect(titles).to_have_text(["the cat sat on"])
    stored = json.loads(page.evaluate("localStorage.getItem('opengpt4.conversations')"))
    assert [c["title"] for c in stored if c["messages"]] == ["the cat sat on"]


def test_model_pricing_shows_a_cost_and_text_only_models_disable_attach(page, server):
    """Extra model fields the server may send: cost from pricing, attach disabled without image support."""
    def models_with_extras(route):
        response = route.fetch()  # the real server's list, plus the extra fields
        body = response.json()
        for m in body["data"]:
            m.update(pricing={"prompt": 0.5, "completion": 1.5}, context_length=128, accepts_images=False)
        route.fulfill(response=response, json=body)

    page.route(re.compile(r"/v1/models$"), models_with_extras)
    open_chat(page, server)
    expect(page.locator("#attach")).to_be_disabled()
    expect(page.locator("#model-info")).to_contain_text("128 tokens context")
    send(page, "the cat sat on")
    reply = last_reply(page)
    usage = reply.locator(".msg-usage").text_content()
    p, c = map(int, re.match(r"(\d+) prompt \+ (\d+) completion", usage).groups())
    assert usage.endswith(f" · ${(p * 0.5 + c * 1.5) / 1000:.3g}"), usage


def test_errors_show_the_server_message(page, server, client):
    """A non-200 shows the envelope's error.message; an error inside a 200 stream keeps the partial text."""
    open_chat(page, server, max_tokens=1000)  # more than the tiny model's 128-token context: a real 400
    send(page, "the cat sat on")
    reply = last_reply(page, "error")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the cat sat on"}],
                                       max_tokens=1000)
    expect(reply.locator(".msg-error")).to_contain_text(e.value.body["message"])

    # A failure after the 200 arrives in-band as data: {"error": ...}; no model fails on cue, so
    # this one stream is canned.
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "tiny",
             "choices": [{"index": 0, "delta": {"content": "partial <b>answer</b>"}}]}
    body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps({'error': {'message': 'the model crashed', 'type': 'server_error'}})}\n\n"
    page.route(CHAT_URL, lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    page.fill("#max-tokens", "")
    send(page, "again")
    reply = last_reply(page, "error")
    expect(reply.locator(".msg-content")).to_have_text("partial <b>answer</b>")  # text, never HTML
    expect(reply.locator(".msg-content b")).to_have_count(0)
    expect(reply.locator(".msg-error")).to_contain_text("the model crashed")


def test_api_key_is_set_in_settings_and_a_429_shows_the_retry_wait(browser, engine, tmp_path):
    """With API keys on: the key is set in Settings; the request over the limit shows the wait."""
    keys = pytest.importorskip("opengpt4.serve.keys", reason="API keys and rate limits are not in the server yet")
    store = keys.KeyStore(tmp_path / "serve.db")
    key = store.create("ui-test", rpm=2)
    context = browser.new_context(viewport={"width": 1180, "height": 760})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        with serve(create_app({"tiny": engine}, keys=store)) as url:
            page.goto(url + "/")
            # No key yet: the model list is refused (401) and the page points at the key setting.
            expect(page.locator("#notice")).to_contain_text("API key")
            page.click("#open-settings")
            page.fill("#api-key", key)
            page.click("#save-settings")
            expect(page.locator("#model")).to_have_value("tiny")
            expect(page.locator("#notice")).to_be_hidden()
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "4")
            assert page.evaluate("localStorage.getItem('opengpt4.apiKey')") == key

            # Whether GET /v1/models counts against rpm=2 is the server's business: send until refused.
            statuses: list[tuple[int, str | None]] = []
            page.on("response", lambda r: statuses.append((r.status, r.headers.get("retry-after")))
                    if CHAT_URL.search(r.url) else None)
            for i in range(3):
                send(page, f"the cat sat on {i}")
                reply = last_reply(page, re.compile("done|error"))
                if reply.get_attribute("data-status") == "error":
                    break
            assert [s for s, _ in statuses][-1] == 429, statuses
            assert any(s == 200 for s, _ in statuses), "the key was never accepted"
            retry_after = statuses[-1][1]
            assert retry_after is not None and retry_after.strip().isdigit(), statuses
            expect(reply.locator(".msg-error")).to_contain_text(f"Rate limit reached — retry in {int(retry_after)} s")
            screenshot(page, "ui-rate-limit.png")
    finally:
        context.close()


def test_a_wrong_key_shows_the_servers_message_and_sending_does_not_replace_it(browser, engine, tmp_path):
    """A wrong key: the server's own 401 message (which key, how to get one) is shown, points at the
    settings, and trying to send anyway shows it again instead of a generic notice."""
    keys = pytest.importorskip("opengpt4.serve.keys", reason="API keys and rate limits are not in the server yet")
    store = keys.KeyStore(tmp_path / "serve.db")
    with new_page(browser) as page, serve(create_app({"tiny": engine}, keys=store)) as url:
        # Wait for the keyless first load's own /v1/models answer: otherwise the wait below can catch
        # it, and its body is gone once the reload navigates away.
        with page.expect_response(re.compile(r"/v1/models$")):
            page.goto(url + "/")
        page.evaluate("localStorage.setItem('opengpt4.apiKey', 'sk-wrong-key-0123456789')")
        with page.expect_response(re.compile(r"/v1/models$")) as response:
            page.reload()
        assert response.value.status == 401
        server_message = response.value.json()["error"]["message"]
        assert server_message.startswith("Incorrect API key provided: sk-wron")
        notice = page.locator("#notice")
        expect(notice).to_contain_text(server_message)
        expect(notice).to_contain_text("Check the API key in Settings")

        send(page, "hello?")
        expect(notice).to_contain_text(server_message)  # still the server's words, not a generic line
        expect(notice).not_to_contain_text("No model is available")
        expect(page.locator("#prompt")).to_have_value("hello?")  # nothing was sent, nothing lost

        notice.get_by_role("button", name="Open settings").click()
        expect(page.locator("#api-key")).to_have_value("sk-wrong-key-0123456789")


def test_a_key_revoked_mid_chat_shows_the_servers_401_message_on_the_reply(browser, engine, tmp_path):
    keys = pytest.importorskip("opengpt4.serve.keys", reason="API keys and rate limits are not in the server yet")
    store = keys.KeyStore(tmp_path / "serve.db")
    key = store.create("ui-test")
    with new_page(browser) as page, serve(create_app({"tiny": engine}, keys=store)) as url:
        page.goto(url + "/")
        page.evaluate(f"localStorage.setItem('opengpt4.apiKey', {json.dumps(key)})")
        page.reload()
        expect(page.locator("#model")).to_have_value("tiny")
        page.fill("#max-tokens", str(MAX_TOKENS))
        store.revoke(store.list()[0].id)
        with page.expect_response(CHAT_URL) as response:
            send(page, "the cat sat on")
        assert response.value.status == 401
        reply = last_reply(page, "error")
        expect(reply.locator(".msg-error")).to_contain_text(response.value.json()["error"]["message"])
        expect(reply.locator(".msg-error")).to_contain_text("Check the API key in Settings.")
        expect(reply.get_by_role("button", name="Open settings")).to_be_visible()


# --- defaults ----------------------------------------------------------------------------------
def test_new_visitors_get_temperature_07_and_512_max_tokens_in_the_request(page, server):
    bodies = chat_requests(page)
    page.goto(server + "/")
    expect(page.locator("#model")).to_have_value("tiny")
    expect(page.locator("#temperature")).to_have_value("0.7")
    expect(page.locator("#max-tokens")).to_have_value("512")
    send(page, "hi")
    reply = last_reply(page, re.compile("done|error"))
    assert bodies[0]["temperature"] == 0.7 and bodies[0]["max_tokens"] == 512, bodies
    # 512 is more than the tiny model's whole 128-token context: the server's own 400 is shown.
    expect(reply.locator(".msg-error")).to_contain_text("maximum context length is 128 tokens")

    # Still editable, and kept across reloads.
    page.fill("#temperature", "0.3")
    page.fill("#max-tokens", "64")
    page.reload()
    expect(page.locator("#temperature")).to_have_value("0.3")
    expect(page.locator("#max-tokens")).to_have_value("64")
    page.fill("#max-tokens", "")  # empty: no limit, and that choice is kept too
    page.reload()
    expect(page.locator("#max-tokens")).to_have_value("")


def test_settings_saved_by_the_old_page_get_the_new_defaults(page, server):
    """The old page saved its defaults (temperature 1, no limit) as if chosen; they read as unchosen."""
    page.goto(server + "/")
    page.evaluate("""localStorage.setItem('opengpt4.settings',
                     JSON.stringify({model: 'tiny', temperature: 1, maxTokens: null}))""")
    page.reload()
    expect(page.locator("#temperature")).to_have_value("0.7")
    expect(page.locator("#max-tokens")).to_have_value("512")
    # A value someone did choose stays.
    page.evaluate("""localStorage.setItem('opengpt4.settings',
                     JSON.stringify({model: 'tiny', temperature: 0.2, maxTokens: 100}))""")
    page.reload()
    expect(page.locator("#temperature")).to_have_value("0.2")
    expect(page.locator("#max-tokens")).to_have_value("100")


# --- Markdown, copy, regenerate ----------------------------------------------------------------
MARKDOWN_REPLY = '# Plan\n**Step 1**: run it <img src=x onerror="pwned=1">\n\n```python\nprint(1 < 2)\n```'


def test_a_streamed_markdown_reply_renders_code_blocks_with_a_copy_button(page, server, tiny_model, tiny_tokenizer):
    """The reply is rendered as sanitized Markdown while it streams and after; the code block's
    Copy button puts the code on the clipboard; the model's HTML stays text; the user's
    message stays plain text; the same rendering comes back after a reload."""
    open_chat(page, server, max_tokens=96)
    # Every render while streaming is sanitized: no element from the model's HTML is ever added,
    # not even for a frame (the page re-renders the reply's Markdown as tokens arrive).
    page.evaluate("""() => {
        window.unsafe = [];
        window.renders = 0;
        new MutationObserver((records) => {
            window.renders++;
            for (const r of records) for (const n of r.addedNodes) {
                if (n.nodeType !== 1) continue;
                for (const el of [n, ...n.querySelectorAll('*')]) {
                    if (['IMG', 'SCRIPT'].includes(el.tagName) || el.hasAttribute('onerror')) window.unsafe.push(el.outerHTML);
                }
            }
        }).observe(document.getElementById('message-list'), {childList: true, subtree: true});
    }""")
    with scripted_replies(tiny_model, tiny_tokenizer, MARKDOWN_REPLY, seconds_per_token=0.02):
        send(page, "**show** me code")
        reply = last_reply(page)
    assert stored_messages(page)[-1]["content"] == MARKDOWN_REPLY
    assert page.evaluate("window.unsafe") == []
    assert page.evaluate("window.renders") >= 10  # rendered as it streamed, not only at the end

    for _ in range(2):  # as streamed, then as rendered again from localStorage
        content = reply.locator(".msg-content")
        expect(content.locator("h1")).to_have_text("Plan")
        expect(content.locator("strong")).to_have_text("Step 1")
        code = content.locator(".code-block pre > code")
        expect(code).to_have_count(1)
        expect(code).to_have_text("print(1 < 2)\n")
        expect(content.locator(".code-lang")).to_have_text("python")
        # The model's HTML is shown as the text it is, never made into an element.
        expect(content).to_contain_text('<img src=x onerror="pwned=1">')
        expect(content.locator("img, script")).to_have_count(0)
        assert page.evaluate("typeof window.pwned") == "undefined"
        # The person's message is not Markdown.
        expect(page.locator(".msg.user .msg-content")).to_have_text("**show** me code")
        expect(page.locator(".msg.user strong")).to_have_count(0)

        content.get_by_role("button", name="Copy code").click()
        expect(content.locator(".code-copy")).to_have_text("Copied")
        assert clipboard(page) == "print(1 < 2)"
        page.reload()
        reply = last_reply(page)
    screenshot(page, "ui-markdown.png")


def test_links_in_replies_are_sanitized_and_open_in_a_new_tab(page, server):
    """Rendering goes through DOMPurify: a javascript: link loses its href; images become links."""
    page.goto(server + "/")
    conversation = {"id": "c1", "title": "links", "system": "", "updated": 1, "messages": [
        {"id": "u1", "role": "user", "content": "links please"},
        {"id": "a1", "role": "assistant", "status": "done", "model": "tiny",
         "content": "[docs](https://example.com/docs) [bad](javascript:window.pwned=1) ![chart](https://example.com/c.png)"},
    ]}
    page.evaluate(f"""localStorage.setItem('opengpt4.conversations', {json.dumps(json.dumps([conversation]))});
                      localStorage.setItem('opengpt4.current', '"c1"')""")
    page.reload()
    links = page.locator(".msg.assistant .msg-content a")
    expect(links).to_have_count(3)
    expect(links.nth(0)).to_have_attribute("href", "https://example.com/docs")
    expect(links.nth(0)).to_have_attribute("target", "_blank")
    expect(links.nth(0)).to_have_attribute("rel", "noopener noreferrer")
    assert links.nth(1).get_attribute("href") is None  # DOMPurify removed the javascript: URL
    expect(links.nth(2)).to_have_attribute("href", "https://example.com/c.png")  # a link, not a fetch
    expect(page.locator(".msg.assistant img")).to_have_count(0)


def test_regenerate_streams_a_new_reply_in_place_of_the_last(page, server, tiny_model, tiny_tokenizer):
    bodies = chat_requests(page)
    open_chat(page, server, max_tokens=48)
    with scripted_replies(tiny_model, tiny_tokenizer, "First answer.", "Second answer."):
        send(page, "the cat sat on")
        reply = last_reply(page)
        expect(reply.locator(".msg-content")).to_have_text("First answer.")
        reply.get_by_role("button", name="Regenerate reply").click()
        expect(page.locator(".msg.assistant")).to_have_count(1)
        reply = last_reply(page)
        expect(reply.locator(".msg-content")).to_have_text("Second answer.")

    assert len(bodies) == 2, bodies  # asked again, with the same conversation (without the old reply)
    assert bodies[1] == bodies[0]
    assert [m["role"] for m in stored_messages(page)] == ["user", "assistant"]
    assert stored_messages(page)[-1]["content"] == "Second answer."
    # Only the last reply can be regenerated: the turns after an earlier one would answer a question that is gone.
    send(page, "seven blue birds")
    last_reply(page)
    regenerate = page.get_by_role("button", name="Regenerate reply")
    expect(regenerate).to_have_count(1)
    expect(page.locator(".msg.assistant").last.get_by_role("button", name="Regenerate reply")).to_have_count(1)


# --- layout: phone width, dark mode ------------------------------------------------------------
LONG_MODEL = "smollm2-135m-instruct"  # the name `make run` serves: the one a 390 px screen cut off
SCREENS = [(390, 844, "light", "ui-390px.png"), (1180, 760, "dark", "ui-dark.png")]


def text_fits(page: Page, selector: str) -> dict:
    """Whether the selected option's text fits inside a <select> (its own scrollWidth says nothing)."""
    return page.evaluate("""(selector) => {
        const select = document.querySelector(selector);
        const style = getComputedStyle(select);
        const probe = document.createElement('span');
        for (const p of ['fontFamily', 'fontSize', 'fontWeight', 'letterSpacing']) probe.style[p] = style[p];
        Object.assign(probe.style, {position: 'absolute', whiteSpace: 'pre', visibility: 'hidden'});
        probe.textContent = select.selectedOptions[0].textContent;
        document.body.append(probe);
        const need = probe.getBoundingClientRect().width;
        probe.remove();
        const room = select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        return {text: probe.textContent, need, room};
    }""", selector)


def luminance(css_color: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", css_color)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


@pytest.mark.parametrize(("width", "height", "scheme", "name"), SCREENS, ids=["390px", "dark"])
def test_screens(browser, engine, tiny_model, tiny_tokenizer, width, height, scheme, name):
    """At 390 px the model's whole name shows and nothing overflows the page sideways; with a dark
    system setting the page is dark. The screenshots are in test-artifacts/."""
    reply_text = "Sure:\n```python\nprint('this line is long enough to scroll sideways')\n```"
    with new_page(browser, viewport={"width": width, "height": height}, color_scheme=scheme) as page, \
            serve(create_app({LONG_MODEL: engine})) as url:
        page.goto(url + "/")
        expect(page.locator("#model")).to_have_value(LONG_MODEL)
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "90")
        with scripted_replies(tiny_model, tiny_tokenizer, reply_text):
            send(page, "code?")
            last_reply(page)
        expect(page.locator(".code-block")).to_have_count(1)

        fit = text_fits(page, "#model")
        assert fit["text"] == LONG_MODEL and fit["need"] <= fit["room"], fit
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        for control in ("#model", "#temperature", "#max-tokens", "#prompt", "#send"):
            box = page.locator(control).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (control, box)
        body = page.evaluate("getComputedStyle(document.body).backgroundColor")
        text = page.evaluate("getComputedStyle(document.body).color")
        if scheme == "dark":
            assert luminance(body) < 0.2 and luminance(text) > 0.7, (body, text)
        else:
            assert luminance(body) > 0.9, body
        screenshot(page, name)
