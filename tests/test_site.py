"""The site as a reader meets it: built, served, and opened page by page in headless Chromium
(Debian's ``chromium``, which ``make test`` installs where missing, driven by Playwright) at a
desktop and a phone width. Screenshots of every page at both widths are saved under
``_build/site-screenshots/`` (not in git) as test artefacts."""
from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

from flatlib import report

# Builds the book, then drives Chromium: none of it in `make test-fast`.
pytestmark = [pytest.mark.browser, pytest.mark.book, pytest.mark.slow]

WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
SHOTS = report.ROOT / "_build" / "site-screenshots"
# What must never reach a published page: progress-bar noise and the build machine's paths.
FORBIDDEN = [re.compile(p) for p in (r"TqdmWarning", r"IProgress not found", r"/root/", r"/work/", r"/home/\w+/",
                                     r"\.venv/lib")]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site (html folder) and the base URL it is served at."""
    if _chromium() is None:
        pytest.skip("no Chromium on this machine: install Debian's chromium (make test does)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: make test installs it")
    out = tmp_path_factory.mktemp("site")
    jb = Path(sys.executable).parent / "jupyter-book"
    built = subprocess.run([str(jb), "build", "book/", "--path-output", str(out)], cwd=report.ROOT,
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    html = out / "_build" / "html"
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield html, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request log in the test output
        pass


def _pages(html: Path) -> list[str]:
    """Every page of the book (the search page and the redirecting index aside)."""
    return sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                  if p.parts[len(html.parts)] not in ("_static", "_sources", "_images")
                  and p.name not in ("search.html", "genindex.html", "index.html"))


def test_every_page_loads_cleanly_at_desktop_and_phone_width(site):
    from playwright.sync_api import sync_playwright

    html, base = site
    pages = _pages(html)
    assert "intro.html" in pages and "methods.html" in pages
    problems: list[str] = []
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        for label, (width, height) in WIDTHS.items():
            context = browser.new_context(viewport={"width": width, "height": height})
            for name in pages:
                page = context.new_page()
                errors: list[str] = []
                page.on("console", lambda m, e=errors: e.append(f"console {m.type}: {m.text}") if m.type == "error"
                        else None)
                page.on("pageerror", lambda exc, e=errors: e.append(f"page error: {exc}"))
                page.on("requestfailed", lambda r, e=errors: e.append(f"failed request: {r.url}"))
                page.on("response", lambda r, e=errors: e.append(f"HTTP {r.status}: {r.url}") if r.status >= 400
                        else None)
                page.goto(urljoin(base, name), wait_until="networkidle")
                problems += [f"{name} @ {label}: {e}" for e in errors]
                broken = page.eval_on_selector_all(
                    "img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
                problems += [f"{name} @ {label}: image not loaded: {src}" for src in broken]
                text = page.inner_text("body")
                problems += [f"{name} @ {label}: page shows {rx.pattern!r}" for rx in FORBIDDEN if rx.search(text)]
                if label == "phone":
                    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                    if overflow > 1:
                        problems.append(f"{name} @ phone: the page scrolls sideways by {overflow} px")
                page.screenshot(path=str(SHOTS / f"{name.replace('/', '__')}-{label}.png"), full_page=False)
                page.close()
            context.close()
        browser.close()
    assert not problems, "\n".join(problems[:60])


def test_every_internal_link_resolves(site):
    html, _ = site
    missing = []
    for name in _pages(html):
        text = (html / name).read_text()
        for href in re.findall(r'href="([^"]+)"', text):
            parsed = urlparse(href)
            if parsed.scheme or href.startswith(("#", "mailto:")):
                continue
            target = (html / name).parent / unquote(parsed.path)
            if parsed.path and not target.exists():
                missing.append(f"{name}: {href}")
    assert not missing, "\n".join(missing[:40])


def test_the_scoreboard_fits_a_phone(site):
    from playwright.sync_api import sync_playwright

    _, base = site
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(urljoin(base, "intro.html"), wait_until="networkidle")
        table = page.locator("table").first
        assert "verdict" in table.text_content()  # its header (a phone shows each cell's label instead)
        box = table.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390 + 1, box
        browser.close()


def test_every_figure_opens_at_full_size(site):
    from playwright.sync_api import sync_playwright

    _, base = site
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 844})
        for name in ("intro.html", "primer/primer.html"):
            page.goto(urljoin(base, name), wait_until="networkidle")
            # each figure's image sits in a link: ours (enlarge.js), or Sphinx's own for a scaled image
            figures = page.eval_on_selector_all("figure img", "imgs => imgs.length")
            links = page.eval_on_selector_all("figure img", "imgs => imgs.map(i => i.closest('a')).filter(a => a)"
                                                            ".map(a => a.href)")
            assert figures > 0 and len(links) == figures, (name, figures, links)
            for href in links:
                assert page.request.get(href).ok, href
        browser.close()


def _browser(p):
    return p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])


def test_the_claims_table_fits_a_phone_with_every_verdict_in_view(site):
    from playwright.sync_api import sync_playwright

    _, base = site
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(urljoin(base, "intro.html"), wait_until="networkidle")
        table = page.locator(".scoreboard table").first
        assert table.evaluate("t => t.scrollWidth <= t.clientWidth + 1"), "the claims table scrolls sideways"
        verdicts = page.eval_on_selector_all(".scoreboard td:nth-child(3)",
                                             "cells => cells.map(c => [c.innerText, c.getBoundingClientRect().right])")
        assert len(verdicts) >= 9 and all(right <= 390 for _, right in verdicts), verdicts
        browser.close()


def _smallest_text_px(path: Path, shown_width: float) -> float | None:
    """The CSS size of a figure's smallest text as shown ``shown_width`` CSS px wide: from the fonts
    recorded in a PNG (``flatlib.plots.savefig``) or written in an SVG (its user units are
    points, scaled with the SVG's width); None for a PNG that records none."""
    from flatlib import plots

    if path.suffix == ".svg":
        text = path.read_text()
        sizes = [float(s) for s in re.findall(r"font-size:\s*([\d.]+)px", text)]
        width = float(re.search(r'viewBox="[\d.\s-]+?\s([\d.]+)\s[\d.]+"', text).group(1))
        return min(sizes) * shown_width / width
    found = plots.metadata(path)
    if not found:
        return None
    natural = found["width_px"] * plots.CSS_PX_PER_INCH / found["dpi"]
    return min(found["fonts_pt"]) * plots.CSS_PX_PER_INCH / 72 * shown_width / natural


def _current(html: Path) -> list[str]:
    """The pages less those of stale chapters, whose outputs are their last run's until they are
    re-run (their page says so; ``flatlib.runner.stale``)."""
    from flatlib import runner

    stale = runner.stale()
    old = {f"{run.folder}/{run.notebook.stem}.html" for run in runner.published() if run.folder in stale}
    return [name for name in _pages(html) if name not in old]


def test_figure_text_is_at_least_9px_on_a_desktop_and_the_claims_figure_on_a_phone(site):
    from playwright.sync_api import sync_playwright

    html, base = site
    small, unmeasured = [], []
    with sync_playwright() as p:
        browser = _browser(p)
        for width, pages in ((1280, _current(html)), (390, ["intro.html"])):
            page = browser.new_page(viewport={"width": width, "height": 900})
            for name in pages:
                page.goto(urljoin(base, name), wait_until="networkidle")
                shown = page.eval_on_selector_all(".bd-article img", "imgs => imgs.map(i => "
                                                  "[i.getAttribute('src'), i.getBoundingClientRect().width])")
                for src, shown_width in shown:
                    path = ((html / name).parent / unquote(urlparse(src).path)).resolve()
                    px = _smallest_text_px(path, shown_width)
                    if px is None:
                        unmeasured.append(f"{name}: {src}")
                    elif px < 9:
                        small.append(f"{name} @ {width}: {src} shows text at {px:.1f} px")
            page.close()
        browser.close()
    assert not unmeasured, "figures not saved by flatlib.plots (re-run their chapters):\n" + "\n".join(unmeasured)
    assert not small, "\n".join(small)


def test_the_landing_page_states_the_bottom_line_first(site):
    from playwright.sync_api import sync_playwright

    from flatlib import scoreboard

    _, base = site
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(urljoin(base, "intro.html"), wait_until="networkidle")
        line = page.locator(".bottom-line").first
        shown = " ".join(line.inner_text().split()).replace("\u2019", "'")  # the site's typographic apostrophes
        assert shown.endswith(" ".join(scoreboard.bottom_line().split()))
        assert line.bounding_box()["y"] < page.locator("figure").first.bounding_box()["y"]
        browser.close()


# Raw TeX that MathJax left as text, a pandas NaN or a dict's repr: none may reach a reader.
RAW = re.compile(r"\\\(|\\\[|\$\$|\$\\|\\(frac|lambda|sigma|alpha|tau|rho|mathrm|lVert)\b|\bNaN\b|\{'[^']*': ")


def test_no_page_shows_raw_tex_nan_a_dict_repr_or_a_pandas_index(site):
    from playwright.sync_api import sync_playwright

    html, base = site
    found = []
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for name in _current(html):
            page.goto(urljoin(base, name), wait_until="networkidle")
            texts = page.evaluate("""() => {
                const walker = document.createTreeWalker(document.querySelector('.bd-article'), NodeFilter.SHOW_TEXT);
                const out = [];
                while (walker.nextNode()) {
                    const node = walker.currentNode;
                    if (!node.parentElement.closest('pre, code, script, style, mjx-container, .highlight'))
                        out.push(node.textContent);
                }
                return out;
            }""")
            found += [f"{name}: {t.strip()[:80]!r}" for t in texts if RAW.search(t)]
            index = page.eval_on_selector_all(".cell_output table tbody th", "cells => cells.length")
            if index:
                found.append(f"{name}: a table with {index} index cells (a raw DataFrame; use flatlib.report.table)")
        browser.close()
    assert not found, "\n".join(found[:40])


def test_the_source_archive_of_the_commit_downloads_from_the_landing_page(site):
    import io
    import tarfile

    from playwright.sync_api import sync_playwright

    _, base = site
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(urljoin(base, "intro.html"), wait_until="networkidle")
        links = page.eval_on_selector_all("a.source-archive", "links => links.map(a => a.href)")
        assert links, "no link to the source archive on the landing page"
        response = page.request.get(links[0])
        assert response.ok, links[0]
        with tarfile.open(fileobj=io.BytesIO(response.body()), mode="r:gz") as archive:
            names = archive.getnames()
        browser.close()
    tracked = subprocess.run(["git", "ls-files"], cwd=report.ROOT, capture_output=True, text=True).stdout.split()
    assert len(names) >= len(tracked) and any(n.endswith("/flatlib/publishing/plots.py") for n in names)
    assert "source.tar.gz" not in tracked
