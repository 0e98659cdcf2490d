"""The page of sefmodel serve in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): a real
photo and its TAEF2 fake, a folder, a corrupt file and a 225-megapixel PNG, read off the page as a person sees them.

Without chromium and chromedriver these tests skip with the reason; with SEF_REQUIRE_BROWSER=1 (set by .ci/run)
they fail instead, so CI cannot pass without having run them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import huge_png
from PIL import Image

from sefmodel.predict import load_detector, predict_files
from sefmodel.serve.app import ServeConfig, background_server, create_app

pytestmark = pytest.mark.browser
WAIT_S = 60


def _require(reason: str) -> None:
    if os.environ.get("SEF_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (SEF_REQUIRE_BROWSER=1: the browser tests must run here)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium under chromedriver, with a fresh profile; no network beyond loopback is needed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        _require("headless-browser tests need chromium and chromedriver (Debian: apt-get install chromium "
                 "chromium-driver)")  # fmt: skip
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _require("headless-browser tests need selenium (pip install -e '.[dev]')")
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--disable-breakpad", "--disable-crash-reporter", "--window-size=1280,1600",
                 f"--user-data-dir={profile / 'data'}"):  # fmt: skip
        options.add_argument(flag)
    # Chromium keeps crash-report settings and dconf state under HOME whatever --user-data-dir says: give it a home
    # inside the temporary profile, so that nothing is written outside it
    home = {"HOME": str(profile), **{f"XDG_{k}_HOME": str(profile / k.lower()) for k in ("CONFIG", "CACHE", "DATA")}}
    service = Service(driver_path, env={**os.environ, **home})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def photo_and_fake(tmp_path_factory, assets, taef2) -> tuple[Path, Path]:
    """A 128-px crop of a real photo and its TAEF2 reconstruction (the demo's recon family), both PNG."""
    from sefdata.generators.base import Runtime
    from sefdata.generators.taesd import TaesdConfig, TaesdGenerator

    folder = tmp_path_factory.mktemp("photo_and_fake")
    real = Image.open(assets / "photos" / "chelsea.png").convert("RGB").crop((160, 60, 288, 188))
    real.save(folder / "chelsea-real.png")
    generator = TaesdGenerator(TaesdConfig(encoder=str(taef2[0]), decoder=str(taef2[1])),
                               Runtime(torch.device("cpu"), torch.float32))  # fmt: skip
    pixels = torch.from_numpy(np.array(real)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        fake = generator.generate(pixels, [0])[0].clamp(0, 1).permute(1, 2, 0).numpy()
    Image.fromarray((fake * 255).round().astype(np.uint8)).save(folder / "chelsea-taef2.png")
    return folder / "chelsea-real.png", folder / "chelsea-taef2.png"


@pytest.fixture(scope="module")
def page(tiny_run, browser, tmp_path_factory):
    """The served page (tiny detector, heatmaps on) with an evaluation report; yields (url, detector)."""
    report = tmp_path_factory.mktemp("eval")
    (report / "plots").mkdir()
    (report / "results.md").write_text("# Evaluation report\n\n| benchmark | AP |\n|---|---|\n| bench | 0.787 |\n\n"
                                       "![ROC curves](plots/roc.png)\n")  # fmt: skip
    Image.new("RGB", (80, 60), "navy").save(report / "plots" / "roc.png")
    detector = load_detector(tiny_run, "cpu")
    with background_server(create_app(detector, ServeConfig(), report)) as url:
        yield url, detector


def _wait_scored(driver, count: int) -> list:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        cards = d.find_elements(By.CSS_SELECTOR, "#results .result")
        if len(cards) == count and not d.find_elements(By.CSS_SELECTOR, "#results .status"):
            return cards
        return False

    return WebDriverWait(driver, WAIT_S).until(ready)


def _open(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(lambda d: "Detector:" in d.find_element(By.ID, "detector").text)


def test_a_photo_and_its_fake_show_scores_gates_and_heatmaps(browser, page, photo_and_fake, tmp_path):
    from selenium.webdriver.common.by import By

    url, detector = page
    _open(browser, url)
    assert "experts recon, sr" in browser.find_element(By.ID, "detector").text
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in photo_and_fake))
    cards = _wait_scored(browser, 2)
    expected = {Path(r["path"]).name: r for r in predict_files(detector, list(photo_and_fake))}
    for card in cards:
        name = card.get_attribute("data-name")
        want = expected[name]
        assert card.find_element(By.CSS_SELECTOR, ".prob").text == f"{want['prob']:.3f}"
        assert card.find_element(By.CSS_SELECTOR, ".label").text == want["label"]
        for expert, weight in want["gate_weights"].items():
            row = card.find_element(By.CSS_SELECTOR, f'tr[data-expert="{expert}"]')
            assert row.find_element(By.CSS_SELECTOR, ".gate-value").text == f"{weight:.3f}"
        maps = card.find_elements(By.CSS_SELECTOR, "img.heatmap")
        assert [m.get_attribute("data-map") for m in maps] == ["recon", "sr", "fused"]
        for image in [card.find_element(By.CSS_SELECTOR, "img.crop"), *maps]:
            assert image.get_attribute("src").startswith("data:image/png;base64,")
            # decoded and laid out by the browser: a person sees a 192 x 192 picture
            assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 192
            assert image.size == {"width": 192, "height": 192}
    assert browser.find_element(By.ID, "progress-text").text == "2 of 2 image(s) scored"
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 0


def test_a_corrupt_file_and_a_225_megapixel_png_get_clear_errors(browser, page, tmp_path):
    from selenium.webdriver.common.by import By

    url, _ = page
    _open(browser, url)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 300)
    huge = huge_png(tmp_path / "huge.png", 15000, 15000)
    browser.find_element(By.ID, "files").send_keys(f"{tmp_path / 'corrupt.jpg'}\n{huge}")
    cards = {c.get_attribute("data-name"): c for c in _wait_scored(browser, 2)}
    corrupt = cards["corrupt.jpg"].find_element(By.CSS_SELECTOR, ".error").text
    too_big = cards["huge.png"].find_element(By.CSS_SELECTOR, ".error").text
    assert corrupt.startswith("error: ") and ("corrupt" in corrupt or "not an image" in corrupt)
    assert too_big == ("error: too many pixels: 225.0 megapixels, over the limit of 50.0 megapixels (read from the "
                       "header, nothing decoded)")  # fmt: skip
    assert all("failed" in c.get_attribute("class") for c in cards.values())


def test_a_folder_shows_progress_and_skips_non_images(browser, page, tmp_path):
    from selenium.webdriver.common.by import By

    url, _ = page
    _open(browser, url)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (40 + i, 40), (40 * i, 90, 160)).save(folder / ("sub" if i % 2 else ".") / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    browser.find_element(By.ID, "folder").send_keys(str(folder))
    cards = _wait_scored(browser, 4)
    assert sorted(c.get_attribute("data-name") for c in cards) == ["0.png", "1.png", "2.png", "3.png"]
    assert browser.find_element(By.ID, "progress-text").text == "4 of 4 image(s) scored"
    assert browser.find_element(By.ID, "progress").get_attribute("value") == "4"


def test_the_report_page_shows_the_tables_and_plots(browser, page):
    from selenium.webdriver.common.by import By

    url, _ = page
    _open(browser, url)
    link = browser.find_element(By.ID, "report-link")
    assert link.is_displayed()
    link.click()
    cell = browser.find_element(By.XPATH, "//td[text()='0.787']")
    assert cell.is_displayed()
    plot = browser.find_element(By.CSS_SELECTOR, "img[alt='ROC curves']")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) == 80


def test_the_uncertain_band_shows_as_its_own_label(browser, tiny_run, tmp_path):
    from selenium.webdriver.common.by import By

    for i in range(2):
        Image.new("RGB", (40, 40 + i), (60 * i, 90, 160)).save(tmp_path / f"{i}.png")
    config = ServeConfig(uncertain="0,1", no_heatmaps=True)  # every probability lies in the band
    with background_server(create_app(load_detector(tiny_run, "cpu"), config)) as url:
        _open(browser, url)
        assert '"uncertain" when 0 ≤ P(generated) ≤ 1' in browser.find_element(By.ID, "detector").text
        browser.find_element(By.ID, "files").send_keys("\n".join(str(tmp_path / f"{i}.png") for i in range(2)))
        for card in _wait_scored(browser, 2):
            assert card.find_element(By.CSS_SELECTOR, ".label").text == "uncertain"
            assert "within the uncertain band 0–1" in card.find_element(By.CSS_SELECTOR, ".verdict").text
