"""`imageclf serve` in a real browser: headless Chromium uploads a photo of the embedded sample and reads the page."""

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from imageclf.apps.serve import MAX_FILES
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


def chromium(language: str) -> webdriver.Chrome:
    """Headless Chromium whose user prefers `language`."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    options.add_argument(f"--lang={language}")
    options.add_experimental_option("prefs", {"intl.accept_languages": language})
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium("en-US")
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
    unknown = f"; {metrics['unknown']} of them called none of these" if metrics["unknown"] else ""
    assert accuracy == f"accuracy {100 * metrics['accuracy']:.1f} % on {metrics['images']} test photos{unknown}"
    rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#metrics tr")]
    assert rows[1:] == [
        f"{label} {100 * s['precision']:.1f} % {100 * s['recall']:.1f} % {100 * s['f1']:.1f} % {s['support']}"
        for label, s in metrics["per_class"].items()
    ]
    picture = browser.find_element(By.CSS_SELECTOR, "#plots img")
    WebDriverWait(browser, 30).until(lambda _: picture.get_property("naturalWidth") > 0)
    assert picture.get_attribute("src").endswith("/plots/confusion_matrix.png")
    assert "cat, dog, horse" in browser.find_element(By.ID, "about").text


def test_an_image_of_none_of_the_classes_says_none_of_these_and_why_above_its_bars_and_heatmap(
    tmp_path: Path, sample_model: SampleModel, browser: webdriver.Chrome
) -> None:
    noise = tmp_path / "noise.png"
    noise.write_bytes(none_of_the_classes()["noise.png"])
    with running_server(sample_model.path) as address:
        browser.get(address)
        WebDriverWait(browser, 30).until(lambda driver: driver.execute_script("return info !== null"))
        browser.find_element(By.ID, "files").send_keys(str(noise))
        label = WebDriverWait(browser, 60).until(lambda driver: driver.find_element(By.CSS_SELECTOR, ".result .label"))
        assert label.text == "none of these"
        assert browser.find_element(By.CSS_SELECTOR, ".result .reason").text.startswith(
            "why: far from every training photo (feature distance)"
        )
        assert len(browser.find_elements(By.CSS_SELECTOR, ".result .bar")) == 3, "the class scores are kept"
        heatmap = browser.find_element(By.CSS_SELECTOR, ".result .heatmap img")  # the page asks the server for it
        WebDriverWait(browser, 30).until(lambda _: heatmap.get_property("naturalWidth") == 128)
        assert heatmap.get_attribute("src").startswith("data:image/png;base64,")


def drop_generated_photos(browser: webdriver.Chrome, count: int) -> None:
    """Drop `count` PNG files (plain squares drawn on a canvas, n0.png ...) onto the page's drop zone."""
    browser.execute_async_script(
        """
        const [count, done] = arguments;
        const transfer = new DataTransfer();
        const canvas = document.createElement("canvas");
        canvas.width = canvas.height = 64;
        const context = canvas.getContext("2d");
        (async () => {
          for (let index = 0; index < count; index++) {
            context.fillStyle = `hsl(${(index * 37) % 360}, 70%, 50%)`;
            context.fillRect(0, 0, 64, 64);
            const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
            transfer.items.add(new File([blob], `n${index}.png`, { type: "image/png" }));
          }
          const zone = document.getElementById("drop");
          zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
          done();
        })();
        """,
        count,
    )


def test_more_photos_than_one_request_takes_are_sent_in_batches_and_all_answered(
    server: str, browser: webdriver.Chrome
) -> None:
    browser.get(server)
    WebDriverWait(browser, 30).until(lambda driver: driver.execute_script("return info !== null"))
    drop_generated_photos(browser, MAX_FILES + 8)
    WebDriverWait(browser, 120).until(
        lambda driver: driver.find_element(By.ID, "status").text.startswith(f"{MAX_FILES + 8} photo(s) in ")
    )
    cards = browser.find_elements(By.CSS_SELECTOR, ".result")
    assert sorted(card.find_element(By.CSS_SELECTOR, ".name").text for card in cards) == sorted(
        f"n{index}.png" for index in range(MAX_FILES + 8)
    )
    labels = [card.find_element(By.CSS_SELECTOR, ".label").text for card in cards]
    assert set(labels) <= {"cat", "dog", "horse"} and not browser.find_elements(By.CSS_SELECTOR, ".error")


FLAGGED = {
    "path": "fox.jpg",
    "label": None,
    "unknown": True,
    "unknown_reason": ["knn"],
    "confidence": 0.5,
    "probabilities": {"cat": 0.3, "dog": 0.5, "horse": 0.2},
}


def show_result(browser: webdriver.Chrome, result: dict) -> None:
    """Render one /predict result object on the page, as the page does with the server's answer."""
    browser.execute_script(
        "const card = document.createElement('div'); card.className = 'result';"
        "document.getElementById('results').prepend(card); answer(card, arguments[0]);",
        result,
    )


def test_the_page_speaks_the_browsers_language_and_the_toggle_switches_it(server: str) -> None:
    heatmap = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(heatmap, "PNG")
    flagged = FLAGGED | {"heatmap": "data:image/png;base64," + base64.b64encode(heatmap.getvalue()).decode()}
    japanese = chromium("ja")
    try:
        japanese.get(server)
        assert japanese.find_element(By.TAG_NAME, "h1").text == "手元の写真でモデルを試す"
        assert japanese.find_element(By.TAG_NAME, "html").get_attribute("lang") == "ja"
        show_result(japanese, flagged)
        assert japanese.find_element(By.CSS_SELECTOR, ".result .label").text == "どれでもない"
        assert japanese.find_element(By.CSS_SELECTOR, ".result .reason").text == (
            "理由: 学習に使ったどの写真とも特徴が離れています (特徴の距離)"
        )
        assert (
            japanese.find_element(By.CSS_SELECTOR, ".heatmap figcaption").text
            == "ネットワークが注目した場所 (Grad-CAM)"
        )

        japanese.find_element(By.ID, "language").click()
        assert japanese.find_element(By.TAG_NAME, "h1").text == "Try the model on your own photos"
        assert japanese.find_element(By.CSS_SELECTOR, ".result .label").text == "none of these"
        assert japanese.find_element(By.CSS_SELECTOR, ".result .reason").text == (
            "why: far from every training photo (feature distance)"
        )
        assert (
            japanese.find_element(By.CSS_SELECTOR, ".heatmap figcaption").text == "where the network looked (Grad-CAM)"
        )
        assert japanese.find_element(By.ID, "language").text == "日本語"
        japanese.refresh()
        assert japanese.find_element(By.TAG_NAME, "h1").text == "Try the model on your own photos", "the choice stays"
    finally:
        japanese.quit()


def test_an_english_browser_gets_english_and_a_photo_flagged_by_two_scores_reads_both(
    server: str, browser: webdriver.Chrome
) -> None:
    browser.get(server)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Try the model on your own photos"
    assert browser.find_element(By.ID, "language").text == "日本語"
    show_result(browser, FLAGGED | {"unknown_reason": ["knn", "imagenet"]})
    assert browser.find_element(By.CSS_SELECTOR, ".result .reason").text == (
        "why: far from every training photo (feature distance); "
        "the backbone's ImageNet classifier sees none of the classes"
    )
    assert not browser.find_elements(By.CSS_SELECTOR, ".heatmap"), "no heatmap unless the server sends one"
