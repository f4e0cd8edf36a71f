"""The page of `mritumor serve` in a real browser (Debian's chromium + chromedriver, through
Selenium): slices uploaded through the page's file input give the predicted type of the API
and a mask overlay drawn on the slice; the screenshot is not blank, the console has no error,
and no request of the page leaves 127.0.0.1."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mritumor.data.acquire.synthetic import write_synthetic_dataset
from mritumor.inference.predict import predict


def find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    for path in ("/usr/lib/chromium/chromium", "/usr/bin/chromium"):
        if names[0] == "chromium" and Path(path).is_file():
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    chromium = find("chromium", "chromium-browser", "google-chrome")
    driver_path = find("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip(
            "chromium or chromedriver is not installed (`make test` installs the Debian packages "
            "chromium and chromium-driver; here: apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")  # fmt: skip
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1200,1400", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-default-apps", "--disable-sync",
    ):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(multitask_checkpoint, hierarchical_checkpoint, tmp_path_factory):
    pytest.importorskip("fastapi")
    import uvicorn

    from mritumor.server.app import Settings, create_app
    from mritumor.server.service import load_models

    tmp_root = tmp_path_factory.mktemp("browser-requests")
    models = load_models([multitask_checkpoint, hierarchical_checkpoint])
    app = create_app(models, Settings(tmp_root=tmp_root))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}", tmp_root, models
    server.should_exit = True
    thread.join(10)


def test_page_uploads_slices_and_shows_prediction_and_overlay(browser, server, multitask_checkpoint, tmp_path):  # fmt: skip
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, tmp_root, models = server
    data = write_synthetic_dataset(tmp_path / "data", patients_per_class=1, slices_per_patient=4, image_size=40, seed=21, classes=(("meningioma", "1"),), patient_prefix="web")  # fmt: skip
    patient = next(data.glob("*/*"))
    slices = sorted(str(p) for p in patient.glob("slice_*.png") if "_mask" not in p.name)
    out = tmp_path / "want.json"
    predict(multitask_checkpoint, patient, output=out, progress=False)
    (want,) = json.loads(out.read_text())["patients"]
    # the tiny model's masks cover whole slices; known masks (the cohort's own) show whether
    # the page draws them where they belong
    truth = {Path(s).name: np.asarray(Image.open(s.replace(".png", "_mask.png"))) > 0 for s in slices}  # fmt: skip
    entry = models["multitask"]
    real = entry.predictor

    class KnownMasks:
        def __call__(self, patient):
            prediction = real(patient)
            prediction.masks = [truth[ref.name] for ref in prediction.used]
            return prediction

        def header(self):
            return real.header()

    entry.predictor = KnownMasks()

    browser.get(url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    assert browser.find_element(By.ID, "model").get_attribute("value") == "multitask"
    browser.find_element(By.ID, "files").send_keys("\n".join(slices))
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_elements(By.ID, "predicted-type") or "error" in d.find_element(By.ID, "status").get_attribute("class"))  # fmt: skip
    assert browser.find_element(By.ID, "status").get_attribute("class") != "error", browser.find_element(By.ID, "status").text  # fmt: skip
    assert browser.find_element(By.ID, "predicted-type").text == want["predicted_type"]
    canvases = browser.find_elements(By.CSS_SELECTOR, "canvas.slice")
    assert len(canvases) == len(slices)
    wait.until(lambda d: all(c.get_attribute("data-rendered") for c in d.find_elements(By.CSS_SELECTOR, "canvas.slice")))  # fmt: skip
    # the overlay: red-tinted pixels exactly where the mask is (each mask pixel is 4×4 on canvas)
    drawn = browser.execute_script(
        """return [...document.querySelectorAll('canvas.slice')].map(c => {
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             const red = [];
             for (let i = 0; i < d.length; i += 4) red.push(d[i] > d[i + 1] + 60 && d[i] > d[i + 2] + 60 ? 1 : 0);
             return [red, c.dataset.rendered, c.width];
           });"""
    )
    entry.predictor = real
    for (red, layers, side), name in zip(drawn, [Path(s).name for s in slices], strict=True):
        assert "mask" in layers
        red = np.array(red, bool).reshape(side, side)
        expected = np.kron(truth[name], np.ones((side // 40, side // 40), bool))
        assert expected.any() and (red & expected).sum() / (red | expected).sum() > 0.9
    rows = browser.find_elements(By.CSS_SELECTOR, "#slice-table tr")
    assert len(rows) == len(slices) + 1

    screenshot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))  # fmt: skip
    assert screenshot.std() > 20 and len(np.unique(screenshot.reshape(-1, 3), axis=0)) > 50
    (tmp_path / "page.png").write_bytes(browser.get_screenshot_as_png())

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    requested = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.append(message["params"]["request"]["url"])
    assert any(u.endswith("/predict") for u in requested)
    outside = [u for u in requested if not u.startswith((url + "/", "data:", "blob:"))]
    assert outside == [], outside
    assert list(tmp_root.iterdir()) == []
