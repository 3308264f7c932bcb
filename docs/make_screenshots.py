"""Screenshot of the committed report's first screen for the README (run by hand after
`make report`): ``.venv/bin/python docs/make_screenshots.py``. Uses the system Chromium, like the
browser tests; docs/jupyterlab.png is copied from tests/artifacts/ after `make test`."""
import shutil
import sys
import time
from pathlib import Path

from selenium import webdriver

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                "--disable-background-networking"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(
        shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    try:
        drv.get((REPO / "total.html").as_uri())
        time.sleep(1)
        drv.save_screenshot(str(REPO / "docs" / "report.png"))
    finally:
        drv.quit()
    lab = REPO / "tests" / "artifacts" / "jupyterlab.png"
    if lab.exists():
        shutil.copyfile(lab, REPO / "docs" / "jupyterlab.png")
    else:
        sys.exit("run the browser tests first (tests/artifacts/jupyterlab.png is missing)")


if __name__ == "__main__":
    main()
