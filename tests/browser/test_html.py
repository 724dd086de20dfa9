"""The built book in a real browser: headless Chromium (Debian's ``chromium`` package, driven by Playwright; no
browser download) opens every page of the HTML from a local server, with every other address blocked.

``make test`` builds the book at the smoke budget and sets ``LDM_BOOK_HTML`` to it; without that these tests skip.
Per page: no console or script errors, no request leaves localhost, every ``<img>`` loaded, no empty output
area, every slider player changes its picture when moved, and every formula is typeset by MathJax (no raw TeX
left in the text). Chapter pages also need their sliders, a Colab
link to their notebook, and citations that link into the bibliography. The last test breaks a copy of a page on
purpose and checks that these checks notice each fault.
"""

import contextlib
import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ["LDM_BOOK_HTML"]).resolve() if os.environ.get("LDM_BOOK_HTML") else None
CHROMIUM = os.environ.get("LDM_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(HTML is None, reason="set LDM_BOOK_HTML to a built book (make test does)")

PAGES = sorted(str(p.relative_to(HTML)) for p in [*HTML.glob("*.html"), *HTML.glob("book/*.html")]) if HTML else []
CHAPTERS = sorted(p.stem for p in [*(ROOT / "book").glob("[0-9][0-9]_*.ipynb"), *(ROOT / "book").glob("appendix_*.ipynb")])
SLIDERS = {  # page -> the sliders it must have: the forward process, then the samplers' settings
    "book/02_ldm_objective.html": {"t", "seed"},
    "book/05_sampling.html": {"steps", "eta", "guidance"},
    "book/06_text_to_image.html": {"guidance"},
    "book/07_inpainting.html": {"rows_covered"},
    "book/08_super_resolution.html": {"noise_std"},
}
# Chromium as root in a closed network: no sandbox, no GPU, none of its own background connections
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

# Per output area: no text (scripts and styles aside) and no picture or table = an empty box on the page.
EMPTY_OUTPUTS = """() => Array.from(document.querySelectorAll('.cell_output')).filter(area => {
    const copy = area.cloneNode(true);
    copy.querySelectorAll('script, style').forEach(node => node.remove());
    return !copy.textContent.trim() && !copy.querySelector('img, svg, canvas, table, video');
}).length"""
# After MathJax's first typesetting pass: how many math elements the page has, those still holding raw TeX (not
# replaced by MathJax's output), and text anywhere outside code that still shows TeX delimiters \( or \[.
MATH = r"""async () => {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
    const math = Array.from(document.querySelectorAll('.math'));
    const untypeset = math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.trim().slice(0, 60));
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    const raw = [];
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        if (node.parentElement.closest('pre, code, script, style, textarea, mjx-container, .highlight')) { continue; }
        if (/\\\(|\\\[/.test(node.textContent)) { raw.push(node.textContent.trim().slice(0, 60)); }
    }
    return {count: math.length, untypeset: untypeset, raw: raw, mathjax: Boolean(window.MathJax && MathJax.version)};
}"""
BROKEN_IMAGES = """() => Array.from(document.images)
    .filter(image => !(image.complete && image.naturalWidth > 0)).map(image => image.src.slice(0, 100))"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """Serve ``folder`` on a free localhost port; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium package (make test does) or set LDM_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site():
    with serve(HTML) as base:
        yield base


@contextlib.contextmanager
def offline_page(browser, base: str):
    """A fresh browser page that may load only from ``base``; yields (page, problems), where problems collects
    every blocked request, console error and script error."""
    problems: list[str] = []

    def local_only(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            problems.append(f"request that needs the network: {route.request.url}")
            route.abort()

    def console(message):
        if message.type == "error":
            problems.append(f"console error: {message.text}")

    context = browser.new_context()
    context.route("**/*", local_only)
    page = context.new_page()
    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    try:
        yield page, problems
    finally:
        context.close()


def check_page(browser, base: str, page_path: str) -> list[str]:
    """Open ``base + page_path`` offline and return every problem found (an empty list: the page works)."""
    with offline_page(browser, base) as (page, problems):
        page.goto(base + page_path, wait_until="load")
        page.wait_for_load_state("networkidle")
        problems += [f"image did not load: {src}" for src in page.evaluate(BROKEN_IMAGES)]
        empty = page.evaluate(EMPTY_OUTPUTS)
        if empty:
            problems.append(f"{empty} empty output area(s)")
        problems += check_sliders(page, SLIDERS.get(page_path, set()))
        problems += check_math(page)
        return list(problems)


def check_math(page) -> list[str]:
    """Every formula typeset by MathJax (served locally: the network is blocked), and no raw TeX left in the text."""
    math = page.evaluate(MATH)
    problems = [f"formula not typeset: {text}" for text in math["untypeset"]]
    problems += [f"raw TeX in the page: {text}" for text in math["raw"] if text not in math["untypeset"]]
    if math["count"] and not math["mathjax"]:
        problems.append(f"{math['count']} formulas but no MathJax loaded")
    return problems


def check_sliders(page, required: set[str]) -> list[str]:
    """Every range input of every slider player, moved to its end with the keyboard, must change the player's
    image; the first one is also dragged with the mouse. ``required``: slider names the page must have."""
    problems, found = [], set()
    for player in page.locator(".ldm-slider").all():
        image = player.locator("img")
        for index, control in enumerate(player.locator("input[type=range]").all()):
            name = control.get_attribute("data-slider")
            found.add(name)
            before = image.get_attribute("src")
            if index == 0:  # drag the thumb from the left end to the right end
                control.scroll_into_view_if_needed()
                box = control.bounding_box()
                page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2)
                page.mouse.down()
                page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2, steps=5)
                page.mouse.up()
            else:
                control.focus()
                page.keyboard.press("End")
            if control.input_value() != control.get_attribute("max"):
                problems.append(f"slider {name!r} did not move to its end")
            if image.get_attribute("src") == before:
                problems.append(f"moving slider {name!r} did not change the picture")
    problems += [f"no slider {name!r} (a static picture instead of a player?)" for name in sorted(required - found)]
    return problems


@pytest.mark.parametrize("page_path", PAGES)
def test_page_works_offline(browser, site, page_path):
    assert check_page(browser, site, page_path) == []


@pytest.fixture(scope="module")
def bibliography_ids(browser, site):
    with offline_page(browser, site) as (page, problems):
        page.goto(f"{site}book/bibliography.html")
        return set(page.evaluate("() => Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))


def test_every_chapter_and_every_slider_page_is_built():
    built = {p.removeprefix("book/").removesuffix(".html") for p in PAGES}
    assert set(CHAPTERS) <= built, f"chapters missing from the HTML: {sorted(set(CHAPTERS) - built)}"
    assert set(SLIDERS) <= set(PAGES)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_typesets_its_formulas_links_to_colab_and_cites_the_bibliography(browser, site, bibliography_ids,
                                                                                 chapter):
    """On one load of each chapter's page: every chapter has formulas and MathJax renders each one (check_page also
    asserts none is left raw); its one Colab link opens its own notebook; its citations point at bibliography
    entries."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    owner_repo = config["repository"]["url"].removeprefix("https://github.com/")
    expected = (f"{config['launch_buttons']['colab_url']}/github/{owner_repo}/blob/"
                f"{config['repository']['branch']}/book/{chapter}.ipynb")
    with offline_page(browser, site) as (page, problems):
        page.goto(f"{site}book/{chapter}.html", wait_until="load")
        page.wait_for_load_state("networkidle")
        math = page.evaluate(MATH)
        rendered = page.locator(".math mjx-container").count()
        links = [a.get_attribute("href") for a in page.locator("a[href*='colab.research.google.com']").all()]
        targets = [a.get_attribute("href") for a in page.locator("a[href^='bibliography.html#']").all()]
    assert math["count"] > 0 and math["mathjax"], f"{chapter}: {math}"
    assert rendered >= math["count"] and not math["untypeset"] and not math["raw"], f"{chapter}: {math}"
    assert links == [expected]
    assert targets, f"{chapter} cites no paper through the bibliography"
    missing = [t for t in targets if t.split("#", 1)[1] not in bibliography_ids]
    assert not missing, f"citations pointing nowhere: {missing}"


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    """Break a copy of chapter 2: one figure's file is gone, the forward-process player becomes a plain picture of
    its first frame, MathJax's script is gone, and the page gains a script from a CDN, a script that logs an error,
    an empty output area and a formula in plain text. The same checks must report each."""
    copy = tmp_path / "html"
    shutil.copytree(HTML, copy)
    page = copy / "book" / "02_ldm_objective.html"
    text = page.read_text()
    figure = re.search(r'<img[^>]+src="(\.\./_images/[^"]+)"', text).group(1)
    (page.parent / figure).unlink()
    player = re.search(r'<div class="ldm-slider".*?</script></div>', text, re.S)
    assert 'data-slider="t"' in player.group(0)
    frame = re.search(r'<img [^>]*src="data:image/png;base64,[^"]+">', player.group(0)).group(0)
    text = text[:player.start()] + frame + text[player.end():]
    additions = ('<script src="https://cdn.example.org/widgets.js"></script><script>console.error("broken")</script>'
                 '<div class="cell_output"><div class="output"></div></div><p>\\(x_\\mathrm{raw}\\)</p></body>')
    mathjax = re.search(r'<script[^>]*src="[^"]*mathjax/[^"]*"[^>]*></script>', text).group(0)
    text = text.replace(mathjax, "")  # the page's formulas are left as raw TeX, as before the MathJax fix
    page.write_text(text.replace("</body>", additions, 1))
    with serve(copy) as base:
        problems = check_page(browser, base, "book/02_ldm_objective.html")
    assert any(p.startswith("image did not load") and figure.split("/")[-1] in p for p in problems), problems
    assert "no slider 't' (a static picture instead of a player?)" in problems, problems
    assert "request that needs the network: https://cdn.example.org/widgets.js" in problems, problems
    assert "console error: broken" in problems, problems
    assert "1 empty output area(s)" in problems, problems
    assert r"raw TeX in the page: \(x_\mathrm{raw}\)" in problems, problems
    assert any(p.startswith("formula not typeset") for p in problems) and any(
        p.endswith("formulas but no MathJax loaded") for p in problems), problems
