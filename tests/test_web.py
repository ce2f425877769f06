"""The web page at `/`, end to end in headless Chromium (Debian's `chromium` + `chromium-driver`).

The screenshot lands in `test-artifacts/web.png` at the repository root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from realm.pipeline import Pipeline
from tests.test_serve import CASE, build_corpora, serving

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
QUESTION = "which city has the eiffel tower?"


def chrome(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install them with `apt-get install -y chromium chromium-driver` "
            "(CI does, see .ci/run)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1100,1000", f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    # An explicit driver path: selenium must not try to download one (this machine is offline).
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.mark.slow
def test_ask_in_the_browser(tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    corpora = build_corpora(tmp_path)
    pipeline = Pipeline.from_pretrained(CASE, corpora["store_a"], corpora["index_a"], k=3)
    expected = pipeline.ask([QUESTION])[0]
    best = next(e for e in expected.evidence if e.block_id == expected.block_id)
    assert expected.text, "the fixture's answer span should not be empty"

    with serving(pipeline, credit="Text: test fixture (CC BY-SA)") as url:
        driver = chrome(tmp_path)
        try:
            wait = WebDriverWait(driver, 30)
            driver.get(url + "/")
            wait.until(lambda d: d.find_element(By.ID, "credit").text == "Text: test fixture (CC BY-SA)")
            assert "8 blocks" in driver.find_element(By.ID, "corpus").text

            # An error from the API is shown to the user (k over the limit).
            driver.find_element(By.ID, "k").clear()
            driver.find_element(By.ID, "k").send_keys("99")
            driver.find_element(By.ID, "question").send_keys(QUESTION)
            driver.find_element(By.ID, "submit").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "422"))
            assert "error" in driver.find_element(By.ID, "status").get_attribute("class")
            assert "(k)" in driver.find_element(By.ID, "status").text

            driver.find_element(By.ID, "k").clear()
            driver.find_element(By.ID, "k").send_keys("3")
            driver.find_element(By.ID, "submit").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Answered"))

            assert driver.find_element(By.ID, "answer").text == expected.text
            blocks = driver.find_elements(By.CSS_SELECTOR, "#evidence li.block")
            assert len(blocks) == len(expected.evidence)
            for item, evidence in zip(blocks, expected.evidence, strict=True):
                assert int(item.get_attribute("data-block-id")) == evidence.block_id
                fill = item.find_element(By.CSS_SELECTOR, ".bar .fill")
                width = float(fill.value_of_css_property("width").removesuffix("px"))
                bar = float(
                    item.find_element(By.CSS_SELECTOR, ".bar")
                    .value_of_css_property("width")
                    .removesuffix("px")
                )
                assert width == pytest.approx(bar * evidence.retrieval_probability, abs=1.5)
            top = driver.find_element(By.CSS_SELECTOR, "#evidence li.block.best")
            assert top.find_element(By.CSS_SELECTOR, ".text").text.replace("\n", " ") == best.text
            assert top.find_element(By.CSS_SELECTOR, "mark.answer").text == expected.text == best.span_text

            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / ".gitignore").write_text("*\n")  # artefacts are never committed
            shot = tmp_path / "web.png"
            assert driver.save_screenshot(str(shot))
            shutil.copy(shot, ARTIFACTS / "web.png")
        finally:
            driver.quit()
