"""The built site in a real browser: the mathematics renders, offline.

The strict build of tests/test_docs.py (shared, built once per test process) is served on
127.0.0.1 and two pages, a notebook and an API page, are opened in headless Chromium (Debian's
``chromium``), which runs MathJax and dumps the rendered DOM. Each page must show rendered
formulas (MathJax's ``<mjx-container>`` elements) and no raw TeX in its visible text, while the
page as built holds the TeX that MathJax replaced. The browser has no network but the local
server, so the maths can only come from the site itself.

Without ``chromium`` the tests skip, naming the package to install; in CI (``CI=true``; ``.ci/run``
installs it) they fail instead.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_docs import site  # noqa: F401  (the shared build, a session fixture)

PAGES = ["notebooks/01_resnets_as_odes/", "api/core/"]
# Elements whose text is not prose: code, scripts, and the rendered maths themselves.
_HIDDEN = {"script", "style", "pre", "code", "mjx-container", "textarea", "svg", "noscript", "template"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Inline or displayed TeX as written in a page: $…$, \(, \[, or a command such as \theta.
RAW_TEX = re.compile(r"\$[^$\n]{1,200}\$|\\\(|\\\[|\\[A-Za-z]{2,}")


class _VisibleText(HTMLParser):
    def __init__(self):
        super().__init__()
        self.open, self.parts = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in _VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.open:
            while self.open.pop() != tag:
                pass

    def handle_data(self, data):
        if not _HIDDEN.intersection(self.open):
            self.parts.append(data)


def visible_text(html: str) -> str:
    """The text a reader sees: the page's text outside code, scripts and rendered formulas."""
    parser = _VisibleText()
    parser.feed(html)
    return " ".join(parser.parts)


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium")
    if path is None:
        message = "Debian's chromium is not installed: apt-get install -y chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (.ci/run installs it)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def served(site):  # noqa: F811
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def rendered_dom(chromium: str, url: str, profile) -> str:
    """The DOM of ``url`` after its scripts ran (up to 10 s of the page's own time)."""
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and "</html>" in out.stdout, out.stderr[-2000:]
    return out.stdout


@pytest.mark.parametrize("page", PAGES)
def test_the_page_renders_its_mathematics_in_a_browser(page, site, served, chromium, tmp_path):  # noqa: F811
    built = (site / page / "index.html").read_text()
    written = RAW_TEX.findall(visible_text(built))
    assert written, "the page as built holds no TeX: nothing to render"
    dom = rendered_dom(chromium, served + page, tmp_path / "profile")
    formulas = len(re.findall(r"<mjx-container\b", dom))
    assert formulas > 0, f"{page}: no formula rendered ({len(written)} TeX spans in the page as built)"
    assert "<mjx-merror" not in dom, f"{page}: MathJax reports a TeX error"
    raw = RAW_TEX.findall(visible_text(dom))
    assert not raw, f"{page}: raw TeX left in the text: {raw[:5]}"
