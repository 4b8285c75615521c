"""Driving the console in Debian's chromium through Playwright, with the checks every page
gets: no page errors, no Content-Security-Policy violations, no horizontal overflow on a
phone, and (in Chinese) no English left: text nodes made only of ASCII outside data
(``translate="no"``) and an allow-list of names.  Screenshots go to the artifacts
directory."""

from __future__ import annotations

import os
import re
from typing import Any

from tests.peers import CHROMIUM

ARTIFACTS = os.environ.get("RELAYMAIL_ARTIFACTS", os.path.join("var", "artifacts"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
# Words a Chinese page may show as they are: names of the product, protocols and units.
ALLOWED_ASCII = {"relaymail", "TLS", "SMTP", "STARTTLS", "OAuth2", "XOAUTH2", "OAUTHBEARER",
                 "English", "ID", "API", "MB", "PID", "HTML", "MX", "SASL"}

# Records CSP violations (the browser also logs them to the console) before any script.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " " + e.sample);
});
"""

# Text nodes in ASCII only (with at least one letter) outside data and the allow-list.
ASCII_SCAN = """
(allowed) => {
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent.trim();
    if (!text || !/[A-Za-z]/.test(text) || /[^\\x00-\\x7f]/.test(text)) continue;
    const parent = node.parentElement;
    if (!parent || parent.closest("[translate=no], script, style, pre, code, [hidden]")) continue;
    if (parent.closest("select") && !parent.closest("option")) continue;
    const words = text.split(/[^A-Za-z0-9]+/).filter((w) => /[A-Za-z]/.test(w));
    if (words.every((w) => allowed.includes(w))) continue;
    out.push(text);
  }
  return out;
}
"""


class Console:
    """One browser page on the console, at one width and in one language."""

    def __init__(self, playwright: Any, base: str, viewport: dict[str, int], lang: str,
                 problems: list[str]) -> None:
        self.base, self.lang, self.viewport, self.problems = base, lang, viewport, problems
        self.browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        self.context = self.browser.new_context(
            viewport=viewport, locale="zh-CN" if lang == "zh" else "en-GB",
            extra_http_headers={"Accept-Language": "zh-CN,zh" if lang == "zh" else "en"})
        self.context.add_init_script(WATCH_CSP)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15000)
        self.where = f"{lang} {viewport['width']}px"
        self.page.on("pageerror", lambda e: problems.append(f"{self.where}: page error {e}"))
        self.page.on("console", self._console)
        self.page.on("dialog", lambda dialog: dialog.accept())

    def _console(self, message: Any) -> None:
        text = message.text
        if "Content Security Policy" in text or (message.type == "error" and
                                                 "favicon" in text):
            self.problems.append(f"{self.where}: console {text}")

    def close(self) -> None:
        self.browser.close()

    @property
    def phone(self) -> bool:
        return self.viewport["width"] < 600

    def login(self, password: str, username: str = "admin") -> None:
        """Log in (the configured admin, or an account user by username or email)."""
        self.page.goto(self.base + "/login")
        self.page.fill("#f-username", username)
        self.page.fill("#f-password", password)
        self.page.click("#login button[type=submit]")
        self.page.wait_for_url(self.base + "/")

    def open(self, path: str, ready: str) -> None:
        self.page.goto(self.base + path)
        self.page.wait_for_selector(ready)

    def check(self, name: str) -> dict[str, Any]:
        """The checks every page gets; a screenshot; what was found."""
        page = self.page
        page.wait_for_timeout(150)  # let late rendering land before looking
        found: dict[str, Any] = page.evaluate(
            "() => ({csp: window.__csp, width: document.documentElement.scrollWidth,"
            " header: document.querySelector('header').getBoundingClientRect().height})")
        for violation in found["csp"]:
            self.problems.append(f"{self.where} {name}: CSP {violation}")
        if self.phone:
            if found["width"] > self.viewport["width"]:
                self.problems.append(f"{self.where} {name}: page is {found['width']} px wide")
            if found["header"] > 60:
                self.problems.append(f"{self.where} {name}: header {found['header']} px high")
        if self.lang == "zh":
            for text in self.untranslated():
                self.problems.append(f"{self.where} {name}: untranslated {text!r}")
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(
            ARTIFACTS, f"console-{name}-{self.lang}-{self.viewport['width']}.png"),
            full_page=True)
        return found

    def untranslated(self) -> list[str]:
        return list(self.page.evaluate(ASCII_SCAN, sorted(ALLOWED_ASCII)))

    def message(self, contains: str) -> str:
        self.page.wait_for_selector(f"#message:has-text({contains!r})")
        return str(self.page.inner_text("#message"))

    def clicked_busy(self, selector: str) -> bool:
        """Click and say whether the button was disabled, with its spinner, at once."""
        return bool(self.page.evaluate(
            "(s) => { const b = document.querySelector(s); b.click();"
            " return b.disabled && b.classList.contains('busy'); }", selector))

    def reload_until(self, selector: str, ready: str, tries: int = 40) -> None:
        """Reload the page (then wait for ``ready``) until ``selector`` is on it."""
        for _ in range(tries):
            if self.page.locator(selector).count():
                return
            self.page.wait_for_timeout(300)
            self.page.reload()
            self.page.wait_for_selector(ready)

    def submit(self, form: str, values: dict[str, str]) -> None:
        """Fill the form's fields (by id) and press its submit button."""
        for selector, text in values.items():
            self.page.fill(selector, text)
        self.page.click(f"{form} button[type=submit]")

    def poll(self, selector: str, reload: str, tries: int = 30) -> None:
        """Wait for ``selector``, pressing the page's own reload button between looks."""
        for _ in range(tries):
            if self.page.locator(selector).count():
                return
            self.page.wait_for_timeout(400)
            self.page.click(reload)
        self.page.wait_for_selector(selector)


READABLE_TIME = re.compile(r"\d{2,4}[/.-]\d{2}[/.-]\d{2,4},? \d{2}:\d{2}:\d{2}")
