"""The shared report, the interactive viewers and JupyterLab, opened in a real headless browser.

Chromium comes from the system packages (``apt-get install chromium chromium-driver``; .ci/run
installs them) and is driven by Selenium with that binary and its driver -- nothing is
downloaded. A missing browser fails these tests with a message saying how to install it: they are
never skipped. Screenshots land in tests/artifacts/ (kept out of git).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import REPO, free_port

ARTIFACTS = REPO / "tests" / "artifacts"
LOCAL = ("file:", "data:", "blob:", "about:", "chrome:", "devtools:")


def _binary(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver

    chrome = _binary("chromium", "chromium-browser", "google-chrome")
    driver_bin = _binary("chromedriver") or ("/usr/bin/chromedriver"
                                            if Path("/usr/bin/chromedriver").exists() else None)
    if not chrome or not driver_bin:
        pytest.fail("no Chromium / chromedriver on PATH: install the system packages "
                    "(apt-get install chromium chromium-driver) -- .ci/run does")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(driver_bin))
    drv.set_page_load_timeout(120)
    ARTIFACTS.mkdir(exist_ok=True)
    yield drv
    drv.quit()


def _requests(drv) -> list[str]:
    """URLs the page asked for since the last call (Chrome's performance log)."""
    urls = []
    for e in drv.get_log("performance"):
        msg = json.loads(e["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def _errors(drv) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def _open(drv, url: str, wait_js: str = "return document.readyState === 'complete'",
          timeout: float = 60):
    drv.get_log("performance"), drv.get_log("browser")          # start clean
    drv.get(url)
    t0 = time.time()
    while not drv.execute_script(wait_js):
        if time.time() - t0 > timeout:
            drv.save_screenshot(str(ARTIFACTS / "not-ready.png"))
            raise AssertionError(f"{url}: not ready after {timeout} s ({wait_js}); screenshot "
                                 f"in {ARTIFACTS / 'not-ready.png'}")
        time.sleep(0.25)


@pytest.mark.slow
def test_report_in_a_browser(browser, quick_run):
    out, run_dir, _, _ = quick_run
    page = out / "total.html"
    _open(browser, page.as_uri())
    time.sleep(1)
    browser.save_screenshot(str(ARTIFACTS / "report.png"))             # the first screen
    assert not _errors(browser), _errors(browser)
    imgs = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 40)])")
    assert len(imgs) >= 5 and all(c and w > 0 for c, w, _ in imgs), imgs
    text = browser.find_element("tag name", "body").text
    assert "sft - raw" in text and "Δr" in text and "sign-flip" in text     # Δ table + headline
    assert "SYNTHETIC BOLD" in text
    assert "import " not in text                                          # code is hidden
    toc = browser.find_elements("css selector", "nav.report-toc a[href^='#']")
    assert len(toc) >= 8
    for a in toc:                          # click each section link: its heading comes into view
        href = a.get_attribute("href").split("#", 1)[1]
        browser.execute_script("window.scrollTo(0, 0)")
        a.click()
        time.sleep(0.1)
        top = browser.execute_script(
            "const id = arguments[0]; const t = document.getElementById(id) ||"
            " document.getElementById(decodeURIComponent(id));"
            "return t ? t.getBoundingClientRect().top : null;", href)
        height = browser.execute_script("return window.innerHeight")
        assert top is not None and -5 <= top < height, (href, top)
    outside = [u for u in _requests(browser) if not u.startswith(LOCAL)]
    assert not outside, outside
    code = out / "total-code.html"
    assert code.exists() and "jp-InputArea-editor" in code.read_text()       # with its code


@pytest.mark.slow
def test_brain_viewer_renders_offline(browser, quick_run):
    _, run_dir, _, _ = quick_run
    view = run_dir / "compare" / "view_raw.html"
    _open(browser, view.as_uri(),
          "const c = document.querySelector('canvas'); return !!c && c.width > 0")
    time.sleep(1.5)
    browser.save_screenshot(str(ARTIFACTS / "viewer.png"))
    drawn = browser.execute_script(    # brain slices drawn on the black background
        "const c = document.querySelector('canvas');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) {"
        "  if (Math.max(d[i], d[i+1], d[i+2]) > 40) n++; } return n / (d.length / 4);")
    assert drawn > 0.15, drawn
    assert not _errors(browser), _errors(browser)
    outside = [u for u in _requests(browser) if not u.startswith(LOCAL)]
    assert not outside, outside



@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a token, .py notebooks opening as notebooks (jupytext)."""
    settings = tmp_path_factory.mktemp("lab-settings")      # user settings: .py -> notebook
    plugin = settings / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings"
    plugin.parent.mkdir(parents=True)
    plugin.write_text(json.dumps({"defaultViewers": {"python": "Jupytext Notebook"}}))
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))                # no network, no pop-up
    port, token = free_port(), "narratives-test-token"
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTER_CONFIG_DIR": str(tmp_path_factory.mktemp("jupyter-config"))}
    jupyter = Path(sys.executable).with_name("jupyter")
    proc = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={REPO}", "--ServerApp.open_browser=False"]
        + (["--allow-root"] if os.name == "posix" and os.geteuid() == 0 else []),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while True:
        try:
            if requests.get(f"{url}/api/status", params={"token": token}, timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.time() - t0 > 90:
            proc.kill()
            raise AssertionError(f"JupyterLab did not start: {proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    yield url, token, proc
    r = requests.post(f"{url}/api/shutdown", params={"token": token}, timeout=10)
    assert r.status_code in (200, 204)
    assert proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_jupyterlab_opens_a_stage_as_a_notebook(browser, lab):
    url, token, _ = lab
    r = requests.get(f"{url}/api/contents/notebooks/05_brain_score.py",
                     params={"token": token, "content": 1}, timeout=30)
    assert r.ok, r.text[:500]
    nb = r.json()
    assert nb["type"] == "notebook"                                    # jupytext contents manager
    cells = nb["content"]["cells"]
    assert any("parameters" in c["metadata"].get("tags", []) for c in cells)
    _open(browser, f"{url}/lab/tree/notebooks/05_brain_score.py?token={token}",
          "return document.querySelectorAll('.jp-Notebook .jp-Cell').length >= 5", timeout=120)
    time.sleep(2)
    assert "Encoding models and brain scores" in browser.find_element("tag name", "body").text
    browser.save_screenshot(str(ARTIFACTS / "jupyterlab.png"))
    outside = [u for u in _requests(browser)
               if not u.startswith(LOCAL) and not u.startswith(url) and not u.startswith("ws")]
    assert not outside, outside
