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
    mistakes: [...document.querySelectorAll("table.mistakes tr")].slice(1).map(
      r => [...r.cells].map(c => c.innerText.trim())),
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
