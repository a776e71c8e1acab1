"""thinksafe view in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven
by Selenium. Skipped where they are missing, unless THINKSAFE_REQUIRE_BROWSER=1 (CI), where a
missing browser is an error.

The server runs on the small finished run of tests/viewer_run.py, or on the run folder named by
THINKSAFE_VIEW_RUN (e.g. a finished `thinksafe demo`). Screenshots are kept in
$THINKSAFE_ARTIFACTS (default: artifacts/viewer/ in the repository). Harmful text is never
printed: the test checks whether it is visible, and says only that."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.browser
REQUIRE = os.environ.get("THINKSAFE_REQUIRE_BROWSER") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("THINKSAFE_ARTIFACTS") or ROOT / "artifacts" / "viewer")


def _need(mod: str):
    try:
        return __import__(mod)
    except ImportError:
        if REQUIRE:
            raise
        pytest.skip(f"{mod} not installed")


@pytest.fixture(scope="module")
def browser():
    _need("selenium")
    _need("uvicorn")
    if not (CHROMIUM and DRIVER):
        if REQUIRE:
            raise RuntimeError("THINKSAFE_REQUIRE_BROWSER=1 but chromium/chromedriver are not installed "
                               "(apt-get install -y chromium chromium-driver)")
        pytest.skip("chromium / chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1000", "--allow-file-access-from-files"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    if os.environ.get("THINKSAFE_VIEW_RUN"):
        return Path(os.environ["THINKSAFE_VIEW_RUN"])
    from viewer_run import make_run
    return make_run(tmp_path_factory.mktemp("browser") / "run")


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    import uvicorn

    from thinksafe.viewer.server import make_app, open_runs
    old = os.environ.get("THINKSAFE_VIEW_CACHE")
    os.environ["THINKSAFE_VIEW_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    runs = open_runs([run_dir])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(make_app(runs), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    t.join(10)
    if old is None:
        os.environ.pop("THINKSAFE_VIEW_CACHE", None)
    else:
        os.environ["THINKSAFE_VIEW_CACHE"] = old


def _wait(cond, timeout=20.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            v = cond()
            if v:
                return v
        except Exception:                              # element not there yet
            pass
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the page")


def _open(d, url):
    d.get(url)
    _wait(lambda: d.find_element("id", "main").get_attribute("data-ready") not in (None, "", "error"))


def _ready(d, hash_):
    _wait(lambda: d.find_element("id", "main").get_attribute("data-ready") == hash_)


def _shot(d, name, top=True):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if top:
        d.execute_script("window.scrollTo(0, 0)")
    p = ARTIFACTS / f"{name}.png"
    d.save_screenshot(str(p))
    assert p.stat().st_size > 1000
    return p


def _body(d) -> str:
    return d.find_element("tag name", "body").text


def _harmful_visible(d, marks) -> bool:
    text = _body(d)
    return any(m in text for m in marks)


def _marks(run_dir):
    """Text that only a harmful completion holds (the fixture's marker; for another run, the answer
    of the sample opened, read from the API by the test itself)."""
    from viewer_run import HARMFUL_MARK
    return [HARMFUL_MARK]


def test_drop_reason_filter_matches_dataset_stats(browser, server, run_dir):
    d = browser
    stats = json.loads((run_dir / "dataset_stats.json").read_text())
    _open(d, server + "#/data/0")
    assert d.find_element("id", "count").text.replace(",", "") == str(stats["total"])
    for reason, n in sorted(stats["dropped"].items()):
        _open(d, server + "#/data/0")
        link = d.find_element("css selector", f'.facet[data-facet="drop"] a[data-value="{reason}"]')
        assert link.find_element("css selector", ".n").text.replace(",", "") == str(n)
        link.click()
        _ready(d, f"#/data/0?drop={reason}")
        assert d.find_element("id", "count").text.replace(",", "") == str(n)
        rows = d.find_elements("css selector", "#samples tr[data-id]")
        assert len(rows) == min(n, 50)
    _shot(d, "training-data-filtered")


def test_sample_reveal_and_base_vs_trained(browser, server, run_dir):
    import urllib.request
    d = browser
    _open(d, server + "#/data/0?drop=unsafe")
    _ready(d, "#/data/0?drop=unsafe")
    first = d.find_element("css selector", "#samples tr[data-id] a")
    rid = first.text
    first.click()
    _ready(d, f"#/sample/0/{rid}")
    api = json.loads(urllib.request.urlopen(f"{server}api/run/0/sample/{rid}").read())
    longest = max(api["completion"]["answer"] or "", api["completion"]["reasoning"] or "", key=len)
    marks = [longest] if len(longest) >= 12 else _marks(run_dir)
    assert d.find_element("id", "prompt").text == api["prompt"].strip()
    assert d.find_element("id", "steered").text.startswith("The following prompt is harmful.")
    assert d.find_elements("css selector", ".hidden-box") and not _harmful_visible(d, marks)
    _shot(d, "sample-hidden")
    d.find_element("css selector", ".hidden-box .reveal").click()
    _wait(lambda: d.find_elements("css selector", ".revealed") and _harmful_visible(d, marks))  # after the click
    _shot(d, "sample-revealed")

    # base vs trained on one prompt whose verdict changed
    _open(d, server + "#/eval")
    change = _wait(lambda: d.find_element("css selector", '#changes a[data-change="harmful->safe"]'))
    n = int(change.text.split("(")[1].rstrip(")"))
    assert n > 0
    change.click()
    _wait(lambda: d.find_element("id", "eval-count").text.replace(",", "") == str(n))
    rows = d.find_elements("css selector", "#eval-table tr[data-id]")
    assert len(rows) == min(n, 50)
    rid = rows[0].get_attribute("data-id")
    rows[0].click()
    side = _wait(lambda: d.find_element("id", "side-by-side"))
    a, b = side.find_element("css selector", ".side-a"), side.find_element("css selector", ".side-b")
    assert "harmful" in a.text and "safe" in b.text
    assert a.find_elements("css selector", ".hidden-box") and not b.find_elements("css selector", ".hidden-box")
    item = json.loads(urllib.request.urlopen(
        f"{server}api/eval/item?a={_q(d, 'a')}&b={_q(d, 'b')}&bench={_q(d, 'bench')}&id={rid}").read())
    hidden = item["a"]["answer"] or item["a"]["reasoning"]
    assert hidden not in a.text
    _shot(d, "eval-side-by-side", top=False)
    a.find_element("css selector", ".reveal").click()
    _wait(lambda: hidden in d.find_element("css selector", "#side-by-side .side-a").text)


def _q(d, key):
    from urllib.parse import parse_qs, quote, urlsplit
    frag = urlsplit(d.current_url).fragment
    return quote(parse_qs(frag.split("?", 1)[1])[key][0]) if "?" in frag else ""


def test_run_page_and_static_bundle_from_disk(browser, server, run_dir, tmp_path):
    d = browser
    _open(d, server + "#/run/0")
    stages = d.find_elements("css selector", "#stages tr")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(stages) == 1 + len(manifest["stages"])
    _shot(d, "run")
    from thinksafe.viewer.bundle import export_bundle
    stats = json.loads((run_dir / "dataset_stats.json").read_text())
    export_bundle([run_dir], tmp_path / "site")
    reason, n = sorted(stats["dropped"].items())[0]
    _open(d, (tmp_path / "site" / "index.html").as_uri() + "#/data/0")
    d.find_element("css selector", f'.facet[data-facet="drop"] a[data-value="{reason}"]').click()
    _ready(d, f"#/data/0?drop={reason}")
    assert d.find_element("id", "count").text.replace(",", "") == str(n)
    _shot(d, "static-bundle")
