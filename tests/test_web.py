"""The web page at `/` and the API docs at `/docs`, end to end in headless Chromium (Debian's `chromium` +
`chromium-driver`).

Without Chromium the tests are skipped, saying how to install it; with `REALM_REQUIRE_BROWSER=1` (set by
`.ci/run`) a missing Chromium fails them instead, so CI always drives the real browser.
The screenshot lands in `test-artifacts/web.png` at the repository root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from realm.doctor import CHROMEDRIVER, CHROMIUM
from realm.pipeline import Pipeline
from tests.test_serve import CASE, build_corpora, serving

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
QUESTION = "which city has the eiffel tower?"
REQUIRE = "REALM_REQUIRE_BROWSER"


def chrome(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        reason = (
            f"{', '.join(missing)} not found; the browser test needs Debian's Chromium: "
            "`apt-get install chromium chromium-driver`"
        )
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{reason} ({REQUIRE}=1: the browser test is required, as in CI)")
        pytest.skip(f"{reason} (set {REQUIRE}=1 to make this a failure)")
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


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """One headless Chromium for the module, started before anything is built (no Chromium: skip at once)."""
    browser = chrome(tmp_path_factory.mktemp("chrome"))
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    corpora = build_corpora(tmp_path_factory.mktemp("corpora"))
    return Pipeline.from_pretrained(CASE, corpora["store_a"], corpora["index_a"], k=3)


@pytest.mark.slow
def test_ask_in_the_browser(driver, pipeline, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    expected = pipeline.ask([QUESTION])[0]
    best = next(e for e in expected.evidence if e.block_id == expected.block_id)
    assert expected.text, "the fixture's answer span should not be empty"

    with serving(pipeline, credit="Text: test fixture (CC BY-SA)") as url:
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
                item.find_element(By.CSS_SELECTOR, ".bar").value_of_css_property("width").removesuffix("px")
            )
            assert width == pytest.approx(bar * evidence.retrieval_probability, abs=1.5)
        top = driver.find_element(By.CSS_SELECTOR, "#evidence li.block.best")
        assert top.find_element(By.CSS_SELECTOR, ".text").text.replace("\n", " ") == best.text
        # The answer's own span is marked in its block (the most probable answer string's best span).
        answer_span = best.text[expected.span_start : expected.span_end]
        assert top.find_element(By.CSS_SELECTOR, "mark.answer").text == expected.text == answer_span

        # The probability replaces the raw joint score; below the threshold the page says "not sure".
        meta = driver.find_element(By.ID, "answer-meta").text
        assert f"probability {100 * expected.probability:.1f}%" in meta and "score" not in meta
        # (the label is shown in capitals by CSS)
        assert driver.find_element(By.ID, "verdict").text.lower() == ("answer" if expected.sure else "not sure — best guess")
        assert 0 < expected.probability < 1
        for percent, verdict in (("0", "answer"), ("100", "not sure — best guess")):
            driver.find_element(By.ID, "threshold").clear()
            driver.find_element(By.ID, "threshold").send_keys(percent)
            driver.find_element(By.ID, "submit").click()
            wait.until(lambda d, v=verdict: d.find_element(By.ID, "verdict").text.lower() == v)
            assert driver.find_element(By.ID, "answer").text == expected.text  # the best guess is still shown
            assert ("below the threshold 100%" in driver.find_element(By.ID, "answer-meta").text) == (percent == "100")
            assert ("unsure" in driver.find_element(By.ID, "answer-box").get_attribute("class")) == (percent == "100")

        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / ".gitignore").write_text("*\n")  # artefacts are never committed
        shot = tmp_path / "web.png"
        assert driver.save_screenshot(str(shot))
        shutil.copy(shot, ARTIFACTS / "web.png")


@pytest.mark.slow
def test_api_key_field_in_the_browser(driver, pipeline, tmp_path) -> None:
    """With --api-key-file the page shows a key field; the key is sent as `Authorization: Bearer` and kept for
    the tab (sessionStorage: it survives a reload of the page). Without a key, no field."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    key = "s3cret-" + "x" * 20
    (tmp_path / "key").write_text(key + "\n")
    expected = pipeline.ask([QUESTION])[0]
    with serving(pipeline, api_key_file=str(tmp_path / "key")) as url:
        wait = WebDriverWait(driver, 30)
        driver.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "api-key").is_displayed())
        driver.find_element(By.ID, "question").send_keys(QUESTION)
        driver.find_element(By.ID, "submit").click()  # no key yet: the server's 401 is shown
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "401"))
        driver.find_element(By.ID, "api-key").send_keys("wrong-key-" + "y" * 10)
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: "401" in d.find_element(By.ID, "status").text and "API key" in d.find_element(By.ID, "status").text)
        driver.find_element(By.ID, "api-key").clear()
        driver.find_element(By.ID, "api-key").send_keys(key)
        driver.find_element(By.ID, "submit").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Answered"))
        assert driver.find_element(By.ID, "answer").text == expected.text
        driver.refresh()  # the key is kept for the session
        wait.until(lambda d: d.find_element(By.ID, "api-key").get_attribute("value") == key)
        driver.find_element(By.ID, "question").send_keys(QUESTION)
        driver.find_element(By.ID, "submit").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Answered"))
        assert driver.execute_script("return sessionStorage.getItem('realm-api-key')") == key
    with serving(pipeline) as url:  # no key needed: no field
        driver.get(url + "/")
        WebDriverWait(driver, 30).until(lambda d: "8 blocks" in d.find_element(By.ID, "corpus").text)
        assert not driver.find_element(By.ID, "api-key").is_displayed()


@pytest.mark.slow
def test_api_docs_offline_in_the_browser(driver, pipeline) -> None:
    """Swagger UI at /docs renders every operation from assets this server sends, and its "Try it out"
    reaches the API."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with serving(pipeline) as url:
        wait = WebDriverWait(driver, 30)
        driver.get(url + "/docs")

        def paths(d) -> set[str]:
            return {
                e.get_attribute("data-path")
                for e in d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
            }

        wait.until(lambda d: {"/ask", "/search", "/health"} <= paths(d))
        assert paths(driver) == {"/ask", "/search", "/health", "/reload"}
        assert "REALM Open-QA" in driver.find_element(By.CSS_SELECTOR, ".info .title").text
        # Everything the page loaded came from this server (no CDN).
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in loaded)
        assert loaded and all(u.startswith(url + "/") for u in loaded), loaded

        health = driver.find_element(By.ID, "operations-default-health_health_get")
        health.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        wait.until(lambda d: health.find_elements(By.CSS_SELECTOR, ".try-out__btn"))[0].click()
        wait.until(lambda d: health.find_elements(By.CSS_SELECTOR, ".execute"))[0].click()
        live = ".live-responses-table tbody .response-col_status"
        status = wait.until(lambda d: health.find_elements(By.CSS_SELECTOR, live))
        assert status[0].text.strip().startswith("200")
        assert (
            '"status": "ok"'
            in health.find_element(By.CSS_SELECTOR, ".live-responses-table .highlight-code").text
        )
