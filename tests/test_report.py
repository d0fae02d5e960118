"""`cvsjepa report`: one self-contained HTML page (every section, every image a PNG data URI, nothing
external), and (slow) what a headless browser draws of it."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cvsjepa.report import PNG_SIGNATURE, SECTIONS


class _Page(HTMLParser):
    """Collects section ids, image sources and every URL-bearing attribute."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.urls, self.tags = [], [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "img":
            self.images.append(a.get("src", ""))
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "data") and v]


@pytest.fixture(scope="module")
def page(ecosystem_run, tmp_path_factory) -> tuple[Path, str]:
    from cvsjepa.cli import main

    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(ecosystem_run.path), "--out", str(out)]) == 0
    return out, out.read_text()


def test_the_report_is_one_self_contained_page(page, ecosystem_run):
    _, html = page
    parsed = _Page()
    parsed.feed(html)
    assert parsed.sections == list(SECTIONS)
    # training curve, PR, reliability, the diagnose PNGs (4 attention clips + curves): all embedded
    n_diag = len(list((ecosystem_run.path / "diagnose").glob("*.png")))
    assert n_diag >= 2 and len(parsed.images) == 3 + n_diag
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    external = [u for u in parsed.urls if not (u.startswith("#") or u.startswith("data:"))]
    assert external == [] and "link" not in parsed.tags and "script" not in parsed.tags
    assert not re.search(r"(https?:)?//[a-z]", re.sub(r"data:[^\"']+", "", html))  # nothing to fetch
    for text in ("95 % CI", "map", "specificity", "not a medical device", "CVS declared at"):
        assert text in html, text


def test_evaluate_report_writes_the_page_into_the_run(ecosystem_run, tmp_path, capsys):
    from cvsjepa.cli import main
    from cvsjepa.rundir import REPORT_FILE

    run = tmp_path / "run"
    shutil.copytree(ecosystem_run.path, run, ignore=shutil.ignore_patterns("wandb", "mlflow", "tensorboard"))
    assert main(["evaluate", str(run), "--split", "val", "--bootstrap", "0", "--time-to-cvs", "off", "--report",
                 "--no-progress", "--device", "cpu"]) == 0
    assert (run / REPORT_FILE).is_file() and str(run / REPORT_FILE) in capsys.readouterr().out


def _screenshot(html: Path, png: Path, browser: str) -> np.ndarray:
    from PIL import Image

    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                           "--window-size=1280,4000", f"--screenshot={png}", html.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


@pytest.mark.slow
def test_the_report_renders_in_a_headless_browser(page, tmp_path):
    """Chromium (Debian's, installed by .ci/run) opens the file with no server: the page is drawn, and
    its embedded figures are, since the same page without its <img> tags draws far fewer coloured
    pixels. Looked at by eye once: title, warning, tables, plots, attention maps and the card."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "no chromium: apt-get install -y chromium (.ci/run installs it)"
    path, html = page
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<img [^>]*>", "", html))
    full, without = _screenshot(path, tmp_path / "full.png", browser), _screenshot(bare, tmp_path / "bare.png", browser)
    colourful = lambda a: float(((a.max(-1) - a.min(-1)) > 80).mean())  # noqa: E731
    assert full.shape[:2] == (4000, 1280) and (full.min(-1) < 240).mean() > 0.03  # not a blank page
    assert colourful(full) > 3 * colourful(without), (colourful(full), colourful(without))
