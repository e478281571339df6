"""What a person sees of a page: it is opened in headless Chromium (Debian's `chromium`, which
`make test` installs), and a probe added to a copy of it reports, once every image and clip has
loaded or failed, what the browser made of them. Tests that need it skip, with the reason, where
no Chromium is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no headless Chromium: `make test` installs Debian's chromium (needs root and apt)",
)

# Runs in the page once it has loaded: waits for each clip's metadata (or its error), then
# writes what it found into <pre id="probe">, which --dump-dom returns.
PROBE = """
<script>
window.addEventListener("load", async () => {
  const clips = [...document.querySelectorAll("audio")];
  await Promise.all(clips.map(a => a.readyState >= 1 || a.error ? null : new Promise(done => {
    a.addEventListener("loadedmetadata", done); a.addEventListener("error", done);
  })));
  const shown = e => e.getBoundingClientRect().height > 0;
  const found = {
    images: [...document.images].map(i => ({
      alt: i.alt, decoded: i.complete && i.naturalWidth > 0, shown: shown(i),
      inMistakes: !!i.closest("#mistakes")})),
    clips: clips.map(a => ({duration: a.duration, error: a.error ? a.error.code : null,
      shown: shown(a)})),
    sections: [...document.querySelectorAll("section")].filter(shown).map(s => s.id),
    headings: [...document.querySelectorAll("h2")].map(h => h.textContent.trim()),
    // Rows of the mistakes table (#, example, true, predicted, score), or the picture cards
    mistakes: [...document.querySelectorAll("table.mistakes tr")].slice(1).map(
      r => [...r.cells].map(c => c.innerText.trim())).concat(
      [...document.querySelectorAll(".cards.mistakes .card")].map((c, i) => [String(i + 1), "",
        c.dataset.true, c.dataset.predicted, c.dataset.score])),
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>
"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


def render(page: Path, work: Path) -> dict:
    """What Chromium shows of `page` (left as it is: the probe goes into a copy in `work`)."""
    work.mkdir(parents=True, exist_ok=True)
    probed = work / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    # Virtual time: the page's loading and the probe's waiting run to the end, whatever the CPU.
    dom = chromium("--virtual-time-budget=30000", "--dump-dom", probed.as_uri(),
                   profile=work / "profile").stdout  # fmt: skip
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe never reported: the page did not finish loading\n{dom[-2000:]}"
    return json.loads(_unescape(found.group(1)))


def screenshot(page: Path, out: Path, width: int = 1100, height: int = 2600) -> Path:
    chromium(f"--window-size={width},{height}", "--virtual-time-budget=10000",
             f"--screenshot={out}", page.as_uri(), profile=out.parent / "profile")  # fmt: skip
    return out


def _unescape(text: str) -> str:
    return (
        text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    )


def table_rows(page: Path, css_class: str) -> list[list[str]]:
    """The cells' text of each body row of the page's <table class=css_class>, read from the
    HTML itself (no browser): what a test compares with the data."""
    from html.parser import HTMLParser

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.inside, self.cell = [], False, None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.inside = css_class in (dict(attrs).get("class") or "").split()
            elif self.inside and tag == "tr":
                self.rows.append([])
            elif self.inside and tag == "td":
                self.cell = []

        def handle_endtag(self, tag):
            if tag == "table":
                self.inside = False
            elif tag == "td" and self.cell is not None:
                self.rows[-1].append(" ".join("".join(self.cell).split()))
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    parser = Rows()
    parser.feed(page.read_text())
    return [row for row in parser.rows if row]  # the header row has <th> cells only
