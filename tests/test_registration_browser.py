"""Issue 14, item 10: the registration example's sign-up form in a real browser. Headless
Chromium (Debian's `chromium` and `chromium-driver`, installed by .ci/run) fills in the
form and submits it: it sees the welcome page, and the SMTP sink receives one e-mail. A
real server, a real worker process relaying the outbox, the app served by uvicorn.

Where Chromium is not installed the test skips, saying so; in CI (CI=true) it fails."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import wait_for

from examples.registration import tasks
from examples.registration.smtp_sink import SmtpSink, free_port
from examples.registration.web import create_app, serve_in_thread

CI = os.environ.get("CI", "").lower() == "true"


def browser_or_skip() -> tuple[str, str]:
    """Paths of Chromium and its driver; skips (or, in CI, fails) when one is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "the selenium package (pip install selenium)"
    else:
        missing = ""
    if chromium is None or driver is None:
        missing = "Chromium and its driver (apt-get install chromium chromium-driver)"
    if missing:
        if CI:
            raise RuntimeError(f"the browser test needs {missing}; CI must have it")
        pytest.skip(f"no {missing} on this machine")
    return chromium, driver  # type: ignore[return-value]


@pytest.fixture
def browser():
    chromium, driver_path = browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def system(url, tmp_path, monkeypatch):
    with SmtpSink(str(tmp_path / "mailbox.db")) as sink:
        monkeypatch.setenv("REDISMQ_URL", url)
        monkeypatch.setenv("REGISTRATION_DB", str(tmp_path / "registration.db"))
        monkeypatch.setenv("SMTP_HOST", sink.host)
        monkeypatch.setenv("SMTP_PORT", str(sink.port))
        tasks.app.connect(None)
        tasks.app.client.create_topic(tasks.TOPIC)
        yield sink
        tasks.app.connect(None)


def test_sign_up_form_in_headless_chromium_shows_welcome_and_sends_one_email(
    browser, system, processes, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    processes.start(
        "worker", "examples.registration.tasks:app", "--processes", "1",
        "--outbox", f"sqlite:///{tmp_path / 'registration.db'}", "--log-level", "ERROR",
    )  # fmt: skip
    with serve_in_thread(create_app(), free_port()) as base:
        browser.get(base + "/")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Sign up"
        browser.find_element(By.NAME, "name").send_keys("Ada Lovelace")
        browser.find_element(By.NAME, "email").send_keys("ada@example.com")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(browser, 30).until(ec.title_is("Welcome"))
        assert browser.find_element(By.TAG_NAME, "h1").text == "Welcome, Ada Lovelace!"
        assert "A welcome e-mail is on its way" in browser.page_source
    assert wait_for(lambda: system.count()[0] >= 1, timeout=60)
    assert not wait_for(lambda: system.count()[0] > 1, timeout=2)  # and no second one
    [mail] = system.messages()
    assert mail["rcpt_to"] == "ada@example.com"
