"""Render an HTML report in headless Chromium (Debian's ``chromium``) and measure its charts.

``render(path)`` loads a copy of the report with a measuring script appended (the report itself
has no script), and returns what the browser laid out: per ``svg.chart``, its kind, its box and
how many bars / curves / points have a non-empty box on screen, plus the console messages.
Chromium runs with every host name unresolvable and a dead proxy, so a report that needed the
network would log a failed load (a console message) instead of reaching anything.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile

_MEASURE = """
<script>
window.addEventListener("load", () => {
  const box = (e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const charts = [...document.querySelectorAll("svg.chart")].map((svg) => ({
    kind: svg.dataset.chart,
    title: svg.getAttribute("aria-label"),
    shown: box(svg),
    bars: [...svg.querySelectorAll("rect.bar")].filter(box).length,
    curves: [...svg.querySelectorAll("polyline.curve")].filter(box).length,
    points: [...svg.querySelectorAll("circle")].filter(box).length,
    series: [...new Set([...svg.querySelectorAll("[data-series]")].map((e) => e.dataset.series))],
  }));
  const out = document.createElement("pre");
  out.id = "tfpipes-measured";
  out.textContent = JSON.stringify(charts);
  document.body.appendChild(out);
});
</script>
"""


def chromium() -> str:
    """The browser's path; fails the test (it is not skipped) when scripts/test-tools.sh has not
    installed it."""
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed; run scripts/test-tools.sh (apt-get install chromium)"
    return exe


def render(path: str, timeout: float = 120) -> tuple[list[dict], list[str]]:
    """(charts as laid out, console lines) of the report at ``path``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert "</body>" in text, f"{path}: not an HTML document"
    with tempfile.TemporaryDirectory(prefix="tfpipes-chromium-") as tmp:
        page = os.path.join(tmp, "report.html")
        with open(page, "w", encoding="utf-8") as f:
            f.write(text.replace("</body>", _MEASURE + "</body>"))
        p = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",  # tests run as root in CI
                "--disable-gpu",
                f"--user-data-dir={os.path.join(tmp, 'profile')}",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--proxy-server=127.0.0.1:9",
                "--enable-logging=stderr",
                "--v=0",
                "--dump-dom",
                f"file://{page}",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    assert p.returncode == 0, p.stderr[-2000:]
    found = re.search(r'<pre id="tfpipes-measured">(.*?)</pre>', p.stdout, re.S)
    assert found, f"the page never finished loading:\n{p.stdout[-2000:]}"
    console = [line for line in p.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(found.group(1))), console
