"""The browser harness itself: a tiny Gradio page and a plain HTTP server, opened in chromium and used."""

from __future__ import annotations

import inspect
import sys


def echo_blocks():
    """A textbox and a button that echoes it into a second textbox, built the way webchat builds its page."""
    from tuneforge.infer.webchat import _gradio, _theme

    gr = _gradio()
    kwargs = {"theme": _theme(gr)} if "theme" in inspect.signature(gr.Blocks).parameters else {}
    with gr.Blocks(title="tuneforge echo", analytics_enabled=False, **kwargs) as blocks:
        said = gr.Textbox(label="Say", elem_id="say")
        button = gr.Button("Echo", elem_id="echo")
        heard = gr.Textbox(label="Heard", elem_id="heard", interactive=False)
        button.click(lambda text: f"echo: {text}", said, heard, api_name="echo")
    return blocks


def test_gradio_page_echoes_in_chromium(browser_page, serve_blocks, screenshot):
    from playwright.sync_api import expect

    url = serve_blocks(echo_blocks())
    assert url.startswith("http://127.0.0.1:")
    page = browser_page
    page.goto(url)
    expect(page).to_have_title("tuneforge echo")
    page.locator("#say textarea").fill("hello from chromium")
    screenshot(page, "typed")
    page.get_by_role("button", name="Echo").click()
    expect(page.locator("#heard textarea")).to_have_value("echo: hello from chromium")
    shot = screenshot(page, "echoed")
    assert shot.is_file() and shot.stat().st_size > 1000 and shot.name == "echoed.png"
    assert page.external_requests == [], f"the page reached beyond the machine: {page.external_requests}"


def test_screenshots_live_outside_the_repository(screenshots_dir):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    assert screenshots_dir.is_dir()
    assert repo not in screenshots_dir.resolve().parents


def test_subprocess_server_is_served_and_stopped(browser_page, serve_process, tmp_path):
    (tmp_path / "index.html").write_text("<html><head><title>plain server</title></head>"
                                         "<body><p id='hi'>hi there</p></body></html>")
    url = serve_process([sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1",
                         "--directory", str(tmp_path)])
    browser_page.goto(url)
    assert browser_page.title() == "plain server"
    assert browser_page.locator("#hi").inner_text() == "hi there"
