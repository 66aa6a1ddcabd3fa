"""The web chat UI (src/opengpt4/serve/static/), driven in a real headless Chromium.

Each test talks to a real uvicorn server on loopback serving the tiny model; nothing on the
API side is mocked. Screenshots land in test-artifacts/ at the repository root.
CI needs Debian's chromium (`apt-get install -y chromium`); Playwright's own browser
download is not used.
"""

import base64
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from opengpt4.engine.generate import Engine
from opengpt4.serve.app import create_app
from tests.helpers import live_server

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


@pytest.fixture
def page(browser) -> Iterator[Page]:
    """A fresh browser context per test: its own, empty localStorage."""
    context = browser.new_context(viewport={"width": 1180, "height": 760})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))  # uncaught exceptions in app.js
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# --- helpers -----------------------------------------------------------------------------------
def open_chat(page: Page, url: str, *, temperature: str = "0", max_tokens: int | None = MAX_TOKENS) -> None:
    page.goto(url + "/")
    expect(page.locator("#model")).to_have_value("tiny")  # the model list came from GET /v1/models
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
    assert reply.locator(".msg-content").text_content() == direct.choices[0].message.content
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
    expect(page.locator(".msg.assistant .msg-content")).to_have_text(direct.choices[0].message.content)


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


def test_stop_button_aborts_generation(page, server, app, tiny_model):
    """Stop aborts the fetch; the server cancels the generation; the partial reply stays; chat goes on."""
    # Hold the model at its 6th forward (prefill + 5 tokens) so the stream is surely mid-way when
    # Stop is clicked; released afterwards, an uncancelled request would run all its tokens.
    release, forwards = threading.Event(), []

    def gate(module, args, output):
        forwards.append(1)
        if len(forwards) >= 6:
            release.wait(timeout=TIMEOUT_MS / 1000)

    hook = tiny_model.register_forward_hook(gate)
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


def test_bad_key_points_at_settings(browser, engine, tmp_path):
    """A wrong key: the error says so and offers the settings."""
    keys = pytest.importorskip("opengpt4.serve.keys", reason="API keys and rate limits are not in the server yet")
    store = keys.KeyStore(tmp_path / "serve.db")
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        with serve(create_app({"tiny": engine}, keys=store)) as url:
            page.goto(url + "/")
            page.evaluate("localStorage.setItem('opengpt4.apiKey', 'sk-wrong')")
            page.reload()
            notice = page.locator("#notice")
            expect(notice).to_contain_text("Check the API key in Settings")
            notice.get_by_role("button", name="Open settings").click()
            expect(page.locator("#api-key")).to_have_value("sk-wrong")
    finally:
        context.close()
