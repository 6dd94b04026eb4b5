"""The built-in chat page in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by selenium; nothing downloaded) against the live server. A
streamed answer shows text before it is complete and can be stopped, a server error is
shown to the user, and documents dropped on the page are ingested, show their status (or
why they failed) and are cited in answers. Screenshots go to the test's folder, or to
$HEARTH_SCREENSHOT_DIR (`make screenshots` writes docs/)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
# Headless, and none of Chromium's own connections to the network (refused here anyway).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,800",
]
FACT = "The access code for the Hearth vault is ZEBRA-4471."


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.skip(
            "no Chromium: Debian's chromium and chromium-driver packages are not installed "
            "(make test installs them where it runs as root with apt)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="hearth-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}: {check()!r}")


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def open_page(driver: Any, server: RunningServer, new_chat: bool = True) -> None:
    driver.get(server.url)
    wait_for(lambda: js(driver, "return $('model').options.length > 0"), what="the models")
    js(driver, "$('temperature').value = '0'")
    if new_chat:  # what an earlier test left in this browser's kept chat is forgotten
        js(driver, "$('clear').click()")


def ask(driver: Any, question: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "input")
    box.send_keys(question)
    box.send_keys(Keys.ENTER)


def last_answer(driver: Any) -> dict[str, str]:
    return js(
        driver,
        """const all = document.querySelectorAll('.msg.assistant');
        const m = all[all.length - 1];
        return m ? {text: m.querySelector('.text').textContent,
                    meta: m.querySelector('.meta').textContent,
                    sources: m.querySelector('.sources').textContent,
                    error: m.querySelector('.error')?.textContent || ''} : null;""",
    )


def button(driver: Any) -> str:
    return js(driver, "return $('send').textContent")


def test_answer_streams_and_stops(browser: Any, server: RunningServer) -> None:
    open_page(browser, server)
    ask(browser, "Write a very long story about a dragon who learns to bake bread.")
    # Text on the page while the answer is still being written ...
    first = wait_for(
        lambda: (a := last_answer(browser)) and a["text"] and button(browser) == "Stop" and a,
        what="the first tokens",
    )
    assert first["meta"] == ""  # ... not complete: no usage line yet
    browser.find_element("id", "send").click()  # "Stop"
    wait_for(lambda: button(browser) == "Send", what="the stop")
    stopped = last_answer(browser)["text"]
    time.sleep(1)
    after = last_answer(browser)
    assert after["text"] == stopped and after["meta"] == "" and not after["error"]
    # The server heard it: the request left the engine.
    stats = lambda: httpx.get(f"{server.url}/stats").json()  # noqa: E731
    wait_for(lambda: stats()["running"] == 0, timeout=10, what="the engine to drop it")


def test_the_chat_is_kept_across_a_reload_until_new_chat(
    browser: Any, server: RunningServer
) -> None:
    open_page(browser, server)
    js(browser, "$('system').value = 'You answer in French.'; $('system').onchange()")
    js(browser, "$('max_tokens').value = '12'")
    ask(browser, "Name a colour.")
    wait_for(lambda: button(browser) == "Send" and last_answer(browser)["meta"], what="the answer")
    answer = last_answer(browser)["text"]
    first_prompt = int(last_answer(browser)["meta"].split(" prompt tokens")[0])
    open_page(browser, server, new_chat=False)  # a reload (or the server restarted)
    shown = js(
        browser,
        "return [...document.querySelectorAll('.msg')].map(m => [m.classList[1], "
        "m.querySelector('.text').textContent])",
    )
    assert shown == [["user", "Name a colour."], ["assistant", answer]]
    assert js(browser, "return $('system').value") == "You answer in French."
    # The next question carries the earlier turn.
    js(browser, "$('max_tokens').value = '4'")
    ask(browser, "Another?")
    wait_for(lambda: button(browser) == "Send" and last_answer(browser)["meta"], what="the answer")
    second_prompt = int(last_answer(browser)["meta"].split(" prompt tokens")[0])
    assert second_prompt > first_prompt + 5  # the question, the answer and this one
    kept = "return JSON.parse(localStorage.getItem('hearth-chat')).messages.length"
    assert js(browser, kept) == 4
    js(browser, "$('clear').click()")
    open_page(browser, server, new_chat=False)
    assert js(browser, "return document.querySelectorAll('.msg').length") == 0


def test_server_error_is_shown(browser: Any, server: RunningServer) -> None:
    open_page(browser, server)
    js(browser, "$('temperature').value = '5'")  # the API allows 0-2
    ask(browser, "Hello")
    error = wait_for(lambda: last_answer(browser)["error"], what="the error")
    assert "temperature" in error
    assert button(browser) == "Send"


def test_documents_are_added_watched_and_cited(
    browser: Any, server: RunningServer, tmp_path: Path
) -> None:
    open_page(browser, server)
    good = tmp_path / "vault-notes.txt"
    good.write_text(
        "Notes on the vault.\n\nThe vault was built in 1998.\n\n"
        f"{FACT} Change it every spring.\n\nVisitors sign the guest book.\n"
    )
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\nthis is not really a PDF\n")
    browser.find_element("id", "files").send_keys(f"{good}\n{broken}")
    rows = wait_for(
        lambda: (
            (r := js(browser, "return [...$('filelist').children].map(li => li.textContent)"))
            and len(r) == 2
            and all("ready" in x or "failed" in x for x in r)
            and r
        ),
        timeout=120,
        what="both files to settle",
    )
    assert any(x.startswith("vault-notes.txt") and "ready" in x for x in rows), rows
    failed = next(x for x in rows if x.startswith("broken.pdf"))
    assert "failed: " in failed and len(failed) > len("broken.pdffailed: ") + 5, failed
    assert js(browser, "return $('store').selectedOptions[0].text") == "My documents"
    js(browser, "$('max_tokens').value = '48'")
    ask(browser, "What is the access code for the vault?")
    answer = wait_for(
        lambda: button(browser) == "Send" and (a := last_answer(browser))["meta"] and a,
        what="the answer",
    )
    generated = re.search(r"(\d+) generated", answer["meta"])
    assert generated and 0 < int(generated[1]) <= 48, answer  # the page's max tokens applied
    assert "vault-notes.txt" in answer["sources"], answer
    screenshots(browser, tmp_path)


def screenshots(driver: Any, folder: Path) -> None:
    """The page in light and dark (it follows the system's colour scheme)."""
    target = Path(os.environ.get("HEARTH_SCREENSHOT_DIR") or folder)
    target.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(target / "chat-page-light.png"))
    dark = [{"name": "prefers-color-scheme", "value": "dark"}]
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": dark})
    driver.save_screenshot(str(target / "chat-page-dark.png"))
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert (target / "chat-page-dark.png").stat().st_size > 10_000
