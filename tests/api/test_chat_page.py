"""The chat page at `GET /`: who gets it (Accept decides), and the page itself in headless Chromium.

The browser tests need Debian's `chromium` on PATH and the `playwright`
package (the test extra); playwright drives the system's browser, never one
it downloads. Without either they are skipped, saying which is missing.
Greedy text differs between CPUs, so they check what a user would see of a
reply (it streams in, it stops, it comes back after a reload), never its words.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import requests

from igllama.api.page import wants_html
from tests.api.conftest import (
    NEVER_STOP,
    ONE_THREAD,
    TIMEOUT,
    ServerProcess,
    assert_cors,
    start_process,
    wait_until,
)

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser tests skip without it
    sync_playwright = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

CHROMIUM = shutil.which("chromium")
# What Chromium sends when it navigates to a page.
BROWSER_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
                  "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")
KEY = "s3cret-key"

# -- who gets the page


@pytest.mark.parametrize(("accept", "html"), [
    (None, False),  # Ollama's clients probe with no Accept
    ("*/*", False),  # curl, requests
    ("text/*", False),
    ("application/json", False),
    (BROWSER_ACCEPT, True),
    ("TEXT/HTML", True),
    ("text/plain, text/html;level=1", True),
    ("text/html; q=0.5", True),
    ("text/html;q=0", False),  # RFC 9110 §12.4.2: weight 0 is "not acceptable"
    ("text/html;q=high", False),
])
def test_only_a_request_naming_html_gets_the_page(accept: str | None, html: bool) -> None:
    assert wants_html(accept) is html


def test_a_browser_gets_the_page_and_every_other_client_ollamas_answer(server: ServerProcess) -> None:
    page = requests.get(server.url, headers={"Accept": BROWSER_ACCEPT}, timeout=TIMEOUT)
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache" and page.headers["vary"] == "Accept"
    assert "<title>igllama chat</title>" in page.text
    assert f"  chat     {server.url}/ in a browser" in server.stderr()  # the banner says where it is
    assert_cors(page)
    # Self-contained: nothing is loaded from anywhere else (no CDN, no second file).
    assert not re.search(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=", page.text)
    for accept in (None, "*/*", "application/json"):  # None: requests sends no Accept at all
        probe = requests.get(server.url, headers={"Accept": accept}, timeout=TIMEOUT)
        assert probe.text == "Ollama is running" and probe.headers["content-type"].startswith("text/plain")
        assert probe.headers["vary"] == "Accept"
    head = requests.head(server.url, headers={"Accept": "text/html"}, timeout=TIMEOUT)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(page.content)
    probe_head = requests.head(server.url, timeout=TIMEOUT)
    assert probe_head.content == b"" and int(probe_head.headers["content-length"]) == len(b"Ollama is running")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_still_gets_ollamas_answer(server: ServerProcess) -> None:
    printed = subprocess.run(["curl", "-s", server.url], capture_output=True, text=True, timeout=TIMEOUT, check=True)
    assert printed.stdout == "Ollama is running"


# -- the page in a browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("chromium is not on PATH (apt-get install chromium)")
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install -e .[test])")
    expect.set_options(timeout=TIMEOUT * 1000)  # the machine's cores are shared: be patient
    with sync_playwright() as playwright:
        # The system's chromium; --no-sandbox because the tests may run as root in a container.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context per test: its own, empty localStorage."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT * 1000)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture(scope="module")
def chat_server(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Room for a long reply (-n 512), greedy by default."""
    server = start_process(["-c", "2048", "-np", "2", "-n", "512", "--temp", "0", *ONE_THREAD],
                           tmp_path_factory.mktemp("chat-page") / "stderr.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key_server(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_process(["-c", "1024", "-np", "1", "-n", "16", "--temp", "0", "--api-key", KEY, *ONE_THREAD],
                           tmp_path_factory.mktemp("chat-page-key") / "stderr.log")
    yield server
    server.stop()


def never_stop(page: Page) -> None:
    """The page's chat requests get NEVER_STOP's logit bias, so replies run to max_tokens."""
    def add_bias(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "logit_bias": NEVER_STOP}))
    page.route("**/v1/chat/completions", add_bias)


def record_reply_lengths(page: Page) -> None:
    """From now on, every change to the page appends the last reply's text length to `window.lengths`."""
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const reply = document.querySelector('article.assistant:last-of-type .content');
            if (reply) window.lengths.push(reply.textContent.length);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
    }""")


def send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def test_a_reply_streams_in_with_its_speed_and_survives_a_reload(chat_server: ServerProcess, page: Page) -> None:
    never_stop(page)
    sent: list[dict[str, Any]] = []
    page.on("request", lambda request: sent.append(json.loads(request.post_data or "{}"))
            if request.url.endswith("/v1/chat/completions") else None)
    page.goto(chat_server.url)
    served = requests.get(f"{chat_server.base_url}/models", timeout=TIMEOUT).json()["data"][0]["id"]
    expect(page.locator("#model option")).to_have_text([served])
    page.click("#settings summary")
    page.fill("#system", "You are terse.")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "40")
    record_reply_lengths(page)

    send(page, "Tell me a story about a fox.\nMake it short.")
    expect(page.locator("#stop")).to_be_enabled()
    expect(page.locator("#send")).to_be_enabled()  # the reply is over
    meta = page.locator("article.assistant .meta")
    # 40 tokens, since the stop tokens were banned; the speed from the usage chunk's timings.
    expect(meta).to_have_text(re.compile(r"^40 tokens · \d+\.\d tokens/s · cut at the token limit$"))
    lengths = page.evaluate("window.lengths")
    growth = sorted({n for n in lengths if n > 0})
    assert len(growth) >= 3 and lengths[-1] == growth[-1], f"the reply did not grow over time: {lengths}"

    [body] = sent
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == served and body["max_tokens"] == 40 and body["temperature"] == 0
    assert body["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "Tell me a story about a fox.\nMake it short."}]

    reply = page.locator("article.assistant .content").inner_text()
    assert reply.strip()
    page.reload()
    expect(page.locator("article.user .content")).to_have_text("Tell me a story about a fox.\nMake it short.")
    expect(meta).to_have_text(re.compile(r"^40 tokens · "))
    assert page.locator("article.assistant .content").inner_text() == reply
    expect(page.locator("#system")).to_have_value("You are terse.")  # the settings are kept too
    expect(page.locator("#max-tokens")).to_have_value("40")

    page.click("#new-chat")
    expect(page.locator("article")).to_have_count(0)
    page.reload()
    expect(page.locator("article")).to_have_count(0)
    expect(page.locator("#model option")).to_have_text([served])


def test_stop_ends_a_long_reply_and_the_server_lets_it_go(chat_server: ServerProcess, page: Page) -> None:
    never_stop(page)
    page.goto(chat_server.url)
    page.click("#settings summary")
    page.fill("#max-tokens", "500")
    send(page, "Count to one thousand.")
    reply = page.locator("article.assistant .content")
    page.wait_for_function("() => document.querySelector('article.assistant .content').textContent.length > 20")
    page.click("#stop")
    expect(page.locator("article.assistant .meta")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    kept = reply.inner_text()
    time.sleep(0.5)
    assert reply.inner_text() == kept and kept.strip()  # nothing more arrives

    # The browser closed the connection; the server cancelled the generation.
    wait_until(lambda: "POST /v1/chat/completions 499 client went away" in chat_server.stderr(), 10,
               lambda: f"the server never saw the client go:\n{chat_server.stderr()[-2000:]}")
    wait_until(lambda: not any(slot["is_processing"] for slot in
                               requests.get(f"{chat_server.url}/slots", timeout=TIMEOUT).json()),
               10, "a slot is still busy after the stop")

    page.reload()  # the partial reply is kept, marked as stopped
    expect(page.locator("article.assistant .meta")).to_have_text("stopped")
    assert reply.inner_text() == kept


def _frame(chunk: dict[str, Any]) -> str:
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def _delta(finish_reason: str | None = None, **delta: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


# One streamed reply as the server frames it, with the keep-alive comments it
# sends when a stream is silent, reasoning, and text that must stay text.
CRAFTED_STREAM = "".join([
    ": ping\n\n",
    _frame(_delta(role="assistant", content="")),
    _frame(_delta(reasoning_content="They want <b>HTML</b>.")),
    ": ping\n\n",
    _frame(_delta(content="Here you are:\n\n```html\n<b>bold</b>\n<script>alert(1)</script>\n```\n"
                          "Use `<img src=x onerror=alert(1)>` with care \U0001f999\nsecond line\n\n"
                          "A <i>new</i> paragraph.")),
    _frame(_delta("stop")),
    _frame({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 21, "total_tokens": 30},
            "timings": {"predicted_n": 21, "predicted_per_second": 48.26}}),
    "data: [DONE]\n\n",
])


def test_replies_render_as_text_with_code_blocks_and_folded_reasoning(chat_server: ServerProcess, page: Page) -> None:
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, content_type="text/event-stream", body=CRAFTED_STREAM))
    page.goto(chat_server.url)
    send(page, "Show me <i>HTML</i>")
    meta = page.locator("article.assistant .meta")
    expect(meta).to_have_text("21 tokens · 48.3 tokens/s")
    log = page.locator("#log")
    expect(log.locator("b, i, img, script")).to_have_count(0)  # nothing the model or the user wrote became HTML
    expect(page.locator("article.user .content")).to_have_text("Show me <i>HTML</i>")
    reasoning = page.locator("article.assistant details.reasoning")
    assert reasoning.evaluate("details => details.open") is False  # folded
    expect(reasoning.locator("summary")).to_have_text("Reasoning")
    assert reasoning.locator("div").text_content() == "They want <b>HTML</b>."
    assert page.locator("article.assistant pre code").text_content() == "<b>bold</b>\n<script>alert(1)</script>"
    paragraphs = page.locator("article.assistant .content > p")
    expect(paragraphs).to_have_count(3)
    expect(paragraphs.nth(1).locator("code")).to_have_text("<img src=x onerror=alert(1)>")
    expect(paragraphs.nth(1).locator("br")).to_have_count(1)
    expect(paragraphs.nth(2)).to_have_text("A <i>new</i> paragraph.")


def test_the_stream_reader_joins_lines_and_characters_split_across_reads(chat_server: ServerProcess,
                                                                          page: Page) -> None:
    page.goto(chat_server.url)
    # The page's own reader, fed one byte per read: every line and the emoji's UTF-8 bytes are split.
    chunks = page.evaluate("""async (body) => {
        const bytes = new TextEncoder().encode(body);
        const stream = new ReadableStream({start(controller) {
            for (const byte of bytes) controller.enqueue(new Uint8Array([byte]));
            controller.close();
        }});
        const seen = [];
        await readEvents(new Response(stream), (chunk) => seen.push(chunk));
        return seen;
    }""", CRAFTED_STREAM)
    payloads = [line.removeprefix("data: ") for line in CRAFTED_STREAM.split("\n\n") if line.startswith("data: {")]
    assert chunks == [json.loads(payload) for payload in payloads]


def test_with_an_api_key_the_page_asks_for_it_across_origins(key_server: ServerProcess, page: Page) -> None:
    # The page needs no key (it is static); the API does.
    assert requests.get(key_server.url, headers={"Accept": "text/html"}, timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{key_server.base_url}/models", timeout=TIMEOUT).status_code == 401
    authorizations = []
    page.on("request", lambda request: authorizations.append(request.headers.get("authorization"))
            if "/v1/" in request.url else None)
    # localhost and 127.0.0.1 are different origins: every API call is a CORS request with a preflight.
    elsewhere = f"http://127.0.0.1:{key_server.port}"
    page.goto(f"http://localhost:{key_server.port}/?api={elsewhere}", wait_until="networkidle")
    form = page.locator("#key-form")
    expect(page.locator("#origin-form")).to_contain_text(elsewhere)  # nothing asked, nothing sent yet
    expect(form).to_be_hidden()
    assert authorizations == []
    page.get_by_role("button", name=f"Use {elsewhere}").click()
    expect(page.locator("#origin-form")).to_be_hidden()
    expect(form).to_be_visible()
    expect(page.locator("#model option")).to_have_count(0)

    page.fill("#key", "wrong")
    page.press("#key", "Enter")
    expect(page.locator("#key-why")).to_contain_text("refused")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Use key").click()
    expect(form).to_be_hidden()
    expect(page.locator("#model option")).to_have_count(1)

    send(page, "Hello")
    expect(page.locator("article.assistant .meta")).to_have_text(re.compile(r"^\d+ tokens · \d+\.\d tokens/s"))
    assert f"Bearer {KEY}" in authorizations and "Bearer wrong" in authorizations

    page.reload()  # the key is remembered, and so is the other server
    expect(page.locator("#model option")).to_have_count(1)
    expect(form).to_be_hidden()
    expect(page.locator("#origin-form")).to_be_hidden()
    expect(page.locator("article.assistant")).to_have_count(1)


def test_a_link_to_another_origin_is_followed_only_once_the_user_accepts_it(
    chat_server: ServerProcess, page: Page,
) -> None:
    elsewhere = "http://elsewhere.test"
    asked: list[str] = []

    def other_server(route: Route) -> None:
        asked.append(route.request.url)
        route.fulfill(status=200, content_type="application/json", headers={"Access-Control-Allow-Origin": "*"},
                      body=json.dumps({"object": "list", "data": [{"id": "remote-model", "object": "model"}]}))

    page.context.route(f"{elsewhere}/**", other_server)
    link = f"{chat_server.url}/?api={elsewhere}"
    served = requests.get(f"{chat_server.base_url}/models", timeout=TIMEOUT).json()["data"][0]["id"]
    notice = page.locator("#origin-form")
    options = page.locator("#model option")

    # Declined: the page stays on the server that served it, and the other one hears nothing.
    page.goto(link, wait_until="networkidle")
    expect(notice).to_contain_text(elsewhere)
    expect(options).to_have_count(0)
    send(page, "Hi")  # not sent anywhere while the question is open
    expect(page.locator("article")).to_have_count(0)
    page.get_by_role("button", name=f"Stay on {chat_server.url}").click()
    expect(options).to_have_text([served])
    assert page.url == f"{chat_server.url}/"
    expect(notice).to_be_hidden()

    # Asked again on the next visit; accepted, the page uses the other server from then on.
    page.goto(link, wait_until="networkidle")
    expect(notice).to_be_visible()
    assert asked == []
    page.get_by_role("button", name=f"Use {elsewhere}").click()
    expect(options).to_have_text(["remote-model"])
    assert asked == [f"{elsewhere}/v1/models"]
    page.reload()
    expect(options).to_have_text(["remote-model"])
    expect(notice).to_be_hidden()


def test_a_refused_chat_request_asks_for_the_key_and_then_sends_it(key_server: ServerProcess, page: Page) -> None:
    page.goto(key_server.url)
    page.fill("#key", KEY)
    page.press("#key", "Enter")
    expect(page.locator("#model option")).to_have_count(1)
    page.evaluate(f"localStorage.setItem('igllama:{key_server.url}:key', 'revoked')")  # as if the key changed
    send(page, "Hi")
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("article.assistant")).to_have_count(0)  # the refused reply is not kept
    page.fill("#key", KEY)
    page.press("#key", "Enter")
    expect(page.locator("article.assistant .meta")).to_have_text(re.compile(r"tokens/s"))
    expect(page.locator("article.user")).to_have_count(1)


def test_with_several_models_the_picker_says_which_must_load_and_a_reply_loads_it(
    model_path: str, page: Page, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from tests.models import SMOLLM2

    folder = tmp_path_factory.mktemp("chat-page-models")
    (folder / "gemma-demo.gguf").symlink_to(model_path)
    (folder / "smollm2.gguf").symlink_to(SMOLLM2.path())
    server = start_process(["--models-dir", str(folder), "-c", "1024", "-np", "1", "-n", "8", "--temp", "0",
                            *ONE_THREAD], folder / "stderr.log")
    try:
        page.goto(server.url)
        options = page.locator("#model option")
        expect(options).to_have_text(["gemma-demo (unloaded)", "smollm2 (unloaded)"])
        page.select_option("#model", "smollm2")
        send(page, "Hi")
        expect(page.locator("#send")).to_be_enabled()  # the reply is over
        expect(page.locator("article.assistant .meta")).to_have_text(re.compile(r"^\d+ tokens · "))  # answered
        expect(options).to_have_text(["gemma-demo (unloaded)", "smollm2"])  # the list was refreshed
    finally:
        server.stop()
