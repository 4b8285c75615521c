"""Real peers the tests drive, each checked for the capability a test uses before it runs.

A missing peer skips the test on a developer's machine with the package to install; in CI
(``CI`` set, where scripts/system-deps installs everything) it fails with that message, so
a missing package is never mistaken for a relaymail bug, nor hidden by a skip."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from twisted.trial.unittest import SkipTest


def require(ok: bool, what: str) -> None:
    """Skip without the capability on a developer machine; in CI, fail naming it."""
    if ok:
        return
    if os.environ.get("CI"):
        raise AssertionError(f"{what} is missing in CI: scripts/system-deps installs it")
    raise SkipTest(f"{what} is not available (scripts/system-deps installs it as root)")


@functools.cache
def swaks_support() -> str:
    """What ``swaks --support`` reports ("TLS supported", "Basic AUTH supported", ...)."""
    if shutil.which("swaks") is None:
        return ""
    result = subprocess.run(["swaks", "--support"], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def require_browser() -> None:
    """Playwright (a test dependency) driving Debian's chromium."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require(False, "playwright (pip, the test extras)")
    require(os.path.exists(CHROMIUM), "chromium (Debian package chromium)")


def require_swaks(*features: str) -> None:
    """swaks with each of ``features`` (e.g. "TLS", "Basic AUTH")."""
    require(shutil.which("swaks") is not None, "swaks (Debian package swaks)")
    for feature in features:
        require(f"{feature} supported" in swaks_support(),
                f"swaks {feature} (for TLS: Debian package libnet-ssleay-perl)")
