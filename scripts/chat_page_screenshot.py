"""A screenshot of the chat page with a short conversation, for the README (docs/chat-page.png).

Needs Debian's chromium and the `playwright` package (the test extra), and a
running server; an instruct model makes a better picture than the demo base
model, e.g. the one the tests fetch (`python -m tests.models`):

    .venv/bin/igllama api ~/.cache/igllama/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf -p 8080 &
    .venv/bin/python scripts/chat_page_screenshot.py http://127.0.0.1:8080 docs/chat-page.png

Each message is sent and its reply waited for; greedy (temperature 0), so
the same model on the same machine gives the same picture.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from playwright.sync_api import sync_playwright

MESSAGES = ["Write a Python function that reverses a string."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("output", help="the PNG to write")
    parser.add_argument("--message", action="append", help="a message to send (repeatable)")
    parser.add_argument("--system", default="You are a concise coding assistant.")
    parser.add_argument("--max-tokens", default="200")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium is not on PATH (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 760}, device_scale_factor=1)
        page.set_default_timeout(300_000)
        page.goto(args.url)
        page.wait_for_selector("#model option", state="attached")
        page.click("#settings summary")
        page.fill("#system", args.system)
        page.fill("#temperature", "0")
        page.fill("#max-tokens", args.max_tokens)
        page.click("#settings summary")  # folded again: the conversation is the picture
        for message in args.message or MESSAGES:
            page.fill("#prompt", message)
            page.press("#prompt", "Enter")
            page.wait_for_function("() => !document.getElementById('send').disabled")
        # The whole conversation in the window (a full-page shot would put the sticky composer mid-page).
        height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport_size({"width": 900, "height": height})
        page.screenshot(path=args.output)
        browser.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
