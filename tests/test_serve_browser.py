"""`imageclf serve` in a real browser: headless Chromium uploads a photo of the embedded sample and reads the page."""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import SampleModel, none_of_the_classes
from tests.test_serve import METRICS, project_with_model, running_server, sample_photos

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("chromium") and shutil.which("chromedriver")),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(project_with_model(tmp_path_factory.mktemp("project"))) as address:
        yield address


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()


def test_a_sample_photo_chosen_on_the_page_shows_its_class_and_bars(server: str, browser: webdriver.Chrome) -> None:
    photo = sample_photos(3)[2]
    expected = requests.post(f"{server}/predict", files={"files": photo.read_bytes()}, timeout=60).json()[0]
    browser.get(server)
    browser.find_element(By.ID, "files").send_keys(str(photo.resolve()))
    label = WebDriverWait(browser, 60).until(lambda driver: driver.find_element(By.CSS_SELECTOR, ".result .label"))
    assert label.text == expected["label"] == "horse"
    bars = [bar.text.split() for bar in browser.find_elements(By.CSS_SELECTOR, ".result .bar")]
    ranked = sorted(expected["probabilities"].items(), key=lambda item: -item[1])
    assert bars == [[name, f"{100 * p:.1f}", "%"] for name, p in ranked], "top-3 classes, best first"
    assert browser.find_element(By.CSS_SELECTOR, ".result .name").text == photo.name
    assert browser.find_element(By.ID, "status").text.startswith("1 photo(s) in ")


def test_the_page_shows_the_test_metrics_and_the_confusion_matrix(server: str, browser: webdriver.Chrome) -> None:
    browser.get(server)
    WebDriverWait(browser, 30).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#metrics table"))
    metrics = json.loads((METRICS / "details/evaluate.json").read_text())
    accuracy = browser.find_element(By.CSS_SELECTOR, "#metrics p").text
    assert accuracy == f"accuracy {100 * metrics['accuracy']:.1f} % on {metrics['images']} test photos"
    rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#metrics tr")]
    assert rows[1:] == [
        f"{label} {100 * s['precision']:.1f} % {100 * s['recall']:.1f} % {100 * s['f1']:.1f} % {s['support']}"
        for label, s in metrics["per_class"].items()
    ]
    picture = browser.find_element(By.CSS_SELECTOR, "#plots img")
    WebDriverWait(browser, 30).until(lambda _: picture.get_property("naturalWidth") > 0)
    assert picture.get_attribute("src").endswith("/plots/confusion_matrix.png")
    assert "cat, dog, horse" in browser.find_element(By.ID, "about").text


def test_an_image_of_none_of_the_classes_says_none_of_these_above_its_bars(
    tmp_path: Path, sample_model: SampleModel, browser: webdriver.Chrome
) -> None:
    noise = tmp_path / "noise.png"
    noise.write_bytes(none_of_the_classes()["noise.png"])
    with running_server(sample_model.path) as address:
        browser.get(address)
        browser.find_element(By.ID, "files").send_keys(str(noise))
        label = WebDriverWait(browser, 60).until(lambda driver: driver.find_element(By.CSS_SELECTOR, ".result .label"))
        assert label.text == "none of these"
        assert len(browser.find_elements(By.CSS_SELECTOR, ".result .bar")) == 3, "the class scores are kept"
