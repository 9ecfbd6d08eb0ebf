"""The inspector page in a real headless browser (Debian's ``chromium``; marker ``browser``).

Checks that the inline script runs offline and finishes: every token span is built (also for an
8K-token trace, rendered in batches), the intro→anchor links are drawn on the coupled panel, and
a screenshot is written and not blank. No timing assertions: chromium's virtual time budget lets
the page's rendering batches run to completion.

Install: ``apt-get install -y chromium`` (the tests skip, saying so, when /usr/bin/chromium is absent).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from rlattn import inspector as ri

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"),
]


def chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--window-size=1400,1000", *extra, url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def small_trace() -> ri.Trace:
    # the 5-token trace of test_inspector.py (one dominated anchor, link 2 -> 4), repeated to 60 tokens
    waad = [1.0, 4.0, 4.0, 2.0, 2.0] * 12
    fai = [0.1, 0.5, 0.05, 0.3, 0.9] * 10 + [None] * 10
    tokens = ["To", " solve", ",", " we", " add\n"] * 12
    return ri.build_trace(waad, fai, token_ids=list(range(60)), tokens=tokens, strategies=["coupled", "local_chunk"],
                          label="browser", meta={"model": "synthetic"})


def rendered_dom(tmp_path: Path, page: Path) -> str:
    r = chromium(tmp_path, page.as_uri(), "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_page_renders_all_tokens_and_links(tmp_path):
    tr = small_trace()
    page = ri.write_html(tmp_path / "p.html", tr)
    dom = rendered_dom(tmp_path, page)
    assert 'data-rendered="done"' in dom
    assert len(re.findall(r'<span class="tok[^"]*" data-i="\d+"', dom)) == 2 * len(tr)  # two panels
    assert len(re.findall(r'class="tok pp[^"]*" data-i', dom)) == 2 * sum(tr.flags["preplan"])
    assert len(re.findall(r'class="tok[^"]* an[^"]*" data-i', dom)) == 2 * sum(tr.flags["anchor"])
    n_links = len(tr.links)
    assert n_links > 0
    drawn = len(re.findall(r'<div class="link', dom))
    assert n_links <= drawn <= 2 * n_links  # coupled panel only; a link across a line break is two stubs


def test_long_trace_renders_completely(tmp_path):
    import random

    rng = random.Random(0)
    T = 8192
    tr = ri.build_trace([rng.uniform(3, 9) for _ in range(T)], [rng.uniform(0, 0.02) for _ in range(T)],
                        token_ids=list(range(T)), tokens=[rng.choice([" a", " bc", "\n", " 12", "."]) for _ in range(T)],
                        strategies=["coupled"], label="8K")
    page = ri.write_html(tmp_path / "long.html", tr)
    dom = rendered_dom(tmp_path, page)
    assert 'data-rendered="done"' in dom
    assert len(re.findall(r'data-i="\d+"', dom)) == T


def test_screenshot_not_blank(tmp_path):
    import matplotlib.image as mpimg

    page = ri.write_report([small_trace()], tmp_path / "out")["html"]
    shot = tmp_path / "shot.png"
    r = chromium(tmp_path, page.as_uri(), f"--screenshot={shot}")
    assert r.returncode == 0, r.stderr[-2000:]
    img = mpimg.imread(shot)
    assert img.shape[:2] == (1000, 1400)
    rgb = img[..., :3]
    assert float(rgb.std()) > 0.05  # not a blank page
    # the γ colouring is on screen: some pixels are the green of amplified tokens
    green = (rgb[..., 1] > rgb[..., 0] + 0.1) & (rgb[..., 1] > rgb[..., 2] + 0.05)
    assert int(green.sum()) > 200


def test_tooltip_shows_token_values(tmp_path):
    tr = small_trace()
    # hover token 4 of the coupled panel once the page is built (a dominated anchor introduced by 2)
    probe = """<script>
    (function wait() {
      if (document.body.dataset.rendered !== "done") return setTimeout(wait, 10);
      const sp = document.querySelector('.toks[data-panel="0"] .tok[data-i="4"]');
      sp.dispatchEvent(new MouseEvent("mouseover", { bubbles: true, clientX: 50, clientY: 50 }));
      document.body.dataset.probed = "yes";
    })();
    </script></body>"""
    page = tmp_path / "tip.html"
    page.write_text(ri.render_html(tr).replace("</body>", probe), encoding="utf-8")
    dom = rendered_dom(tmp_path, page)
    assert 'data-probed="yes"' in dom
    tip = re.search(r'<div id="tip" class="tip"[^>]*>(.*?)</div>', dom, re.S)
    assert tip is not None and "hidden" not in tip.group(0).split(">")[0]
    text = tip.group(1)
    assert text.startswith('#4  " add\\n"  id 4')
    assert "WAAD   2.000" in text and "FAI    0.9000" in text
    assert "▶ γ coupled = 1.250" in text and "γ local_chunk = 1.000" in text
    assert "marks: anchor, dominated" in text and 'introduced by #2 ","' in text
