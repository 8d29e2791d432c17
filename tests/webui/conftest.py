"""Fixtures for browser tests: Debian's chromium driven by Playwright (sync API), servers on a free local port,
and screenshots kept in pytest's temporary folder (never in the repository).

    def test_page(browser_page, serve_blocks, screenshot):
        url = serve_blocks(build_my_blocks())      # a gr.Blocks, served in a background thread
        browser_page.goto(url)
        ...
        screenshot(browser_page, "after-click")      # <tmp>/screenshots-<test>/after-click.png

`browser` is one Chromium for the whole session; `browser_page` a fresh page (own context) per test, which
records every request that leaves 127.0.0.1 in `browser_page.external_requests`. `serve_process` starts a
command (e.g. `tuneforge webui --port {port}`) as a subprocess and waits until it answers over HTTP.
Without chromium or playwright the browser tests skip, saying how to install them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.infer.serving import free_port

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry or version check from Gradio
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")  # the system's chromium only

INSTALL = ("install what is missing with `apt-get install -y chromium` (as root) and `pip install playwright` "
           "(or run `make test`, which installs both where it can)")
# Known to work as root on a machine without internet: no sandbox (root), no GPU, and none of Chromium's
# background traffic (update checks, sync, QUIC probes), which would only pile up refused connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def find_chromium() -> str | None:
    """$TUNEFORGE_CHROMIUM, else Debian's chromium (or chromium-browser) on PATH."""
    given = os.environ.get("TUNEFORGE_CHROMIUM")
    if given:
        return given if os.path.isfile(given) else shutil.which(given)
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (playwright.sync_api.Browser) shared by the session's tests."""
    executable = find_chromium()
    if executable is None:
        problem = (f"TUNEFORGE_CHROMIUM={os.environ['TUNEFORGE_CHROMIUM']} is not a program"
                   if os.environ.get("TUNEFORGE_CHROMIUM") else "Debian's chromium is not installed")
        pytest.skip(f"browser test: {problem}; {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"browser test: the playwright package is not installed; {INSTALL}")
    driver = sync_playwright().start()
    try:
        chromium = driver.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
    except Exception as e:  # a chromium that is installed but cannot start is a failure, not a skip
        driver.stop()
        pytest.fail(f"{executable} did not start under Playwright: {e}")
    yield chromium
    chromium.close()
    driver.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.webui_call_failed = report.failed  # read by browser_page, to keep a picture of a failure
    return report


@pytest.fixture
def browser_page(browser, request, tmp_path_factory):
    """A new page in its own browser context; `page.external_requests` lists URLs requested beyond this
    machine (a page of this project should request none). When the test fails, the page is saved as
    failure.png in a temporary folder whose path is printed with the failure."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.external_requests = []

    def note(sent):
        host = re.match(r"^[a-z]+://([^/:]+|\[[^\]]+\])", sent.url)
        if host and host.group(1) not in LOCAL_HOSTS:
            page.external_requests.append(sent.url)

    page.on("request", note)
    yield page
    if getattr(request.node, "webui_call_failed", False) and not page.is_closed():
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
        path = tmp_path_factory.mktemp(f"failure-{name}") / "failure.png"
        with contextlib.suppress(Exception):  # the picture must not hide the failure itself
            page.screenshot(path=str(path), full_page=True)
            print(f"screenshot of the failed page: {path}")
    context.close()


@pytest.fixture
def screenshots_dir(request, tmp_path_factory) -> Path:
    """A temporary folder for this test's screenshots, under pytest's basetemp; its path is printed."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    folder = tmp_path_factory.mktemp(f"screenshots-{name}", numbered=True)
    print(f"screenshots of {request.node.nodeid}: {folder}")
    return folder


@pytest.fixture
def screenshot(screenshots_dir):
    """screenshot(page, name, full_page=True) -> the PNG's path, saved in screenshots_dir."""

    def take(page, name: str, full_page: bool = True) -> Path:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "page"
        path = screenshots_dir / (stem if stem.endswith(".png") else f"{stem}.png")
        page.screenshot(path=str(path), full_page=full_page)
        print(f"screenshot: {path}")
        return path

    return take


def wait_for_http(url: str, timeout: float = 60.0, alive=lambda: True) -> None:
    """Returns once `url` answers (any HTTP status); raises after `timeout` s or when alive() turns false."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            pass
        if not alive():
            raise RuntimeError(f"the server for {url} exited before it answered")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


@pytest.fixture
def serve_blocks():
    """serve_blocks(blocks) -> URL: serves a gr.Blocks on 127.0.0.1 at a free port in a background thread (the
    project's own launch: no share link, no SSR, no telemetry); closed at teardown."""
    from tuneforge.infer.webchat import launch

    started = []

    def serve(blocks, tries: int = 3) -> str:
        for attempt in range(tries):
            try:
                url = launch(blocks, "127.0.0.1", free_port())
                break
            except Exception:  # the port was taken between choosing and binding it
                if attempt == tries - 1:
                    raise
        started.append(blocks)
        wait_for_http(url)
        return url

    yield serve
    for blocks in started:
        blocks.close()


@pytest.fixture
def serve_process(tmp_path):
    """serve_process(argv, path="/", timeout=120, env=None) -> URL: runs argv (with "{port}" in any item
    replaced by a free port) as a subprocess and waits until http://127.0.0.1:PORT{path} answers. Its output
    goes to a log file whose tail is shown if it exits early; stopped at teardown (terminate, then kill)."""
    procs = []

    def serve(argv: list[str], path: str = "/", timeout: float = 120.0, env: dict | None = None) -> str:
        port = free_port()
        argv = [str(a).replace("{port}", str(port)) for a in argv]
        log = tmp_path / f"server-{len(procs)}.log"
        full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                    start_new_session=True)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(url + path, timeout, alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as e:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{e}; command {argv}; its output ends:\n{tail}") from None
        return url + "/"

    yield serve
    for proc in procs:  # each was started in its own process group: stop that group (the server's children too)
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
