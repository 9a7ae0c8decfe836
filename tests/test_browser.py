"""The app in a real browser (Debian's chromium driven by Playwright): upload, predict, explain, correct, retrain.

Runs whenever ``/usr/bin/chromium`` exists and must run in CI (``CI=true``): there a missing browser is a
failure, not a skip. Screenshots of every tab go to ``assets/screenshots/`` (README figures).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from ui_support import launched, small_options, wait_for_job

from ila_core.data.synthetic import SyntheticConfig, generate
from ila_core.ui import DemoSpec

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[1] / "assets" / "screenshots"
TABS = ("Classify", "Review", "Train", "Models", "Data")
DEMO = DemoSpec(num_cultivars=6, image_size=96, train_per_class=8, holdout_per_class=3, pool_per_class=3)

if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI=true but /usr/bin/chromium is missing: install it with apt-get install -y chromium")
    pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


def _shoot(page, name: str, out: Path) -> None:
    page.wait_for_timeout(400)  # let transitions settle
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / f"{name}.png")


def test_label_explain_correct_and_retrain_in_the_browser(tmp_path):
    """Upload a leaf, see top-k and a heatmap, correct with key 2, retrain from the Train tab, watch it finish."""
    leaf = tmp_path / "leaf-upload.png"
    next(generate(SyntheticConfig(num_cultivars=6, image_size=96), 1, start_index=700))[1].save(leaf)
    options = small_options(demo=DEMO, train_overrides=(("epochs", 4),))
    with launched(tmp_path / "data", options) as (_, url, studio):
        assert wait_for_job(studio, timeout=120)["status"] == "succeeded"
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(url)
                page.wait_for_selector("#ila-header-bar >> text=Serving model v1")

                # Classify: upload -> top-k, flags, a heatmap overlay and exemplars
                page.set_input_files("#ila-upload input[type=file]", str(leaf))
                page.wait_for_selector("#ila-header >> text=leaf-upload.png")
                page.wait_for_selector("#ila-pick-2:not([disabled])")
                candidate = page.inner_text("#ila-pick-2").split()[1]
                page.wait_for_selector("#ila-slider img")
                page.wait_for_selector("#ila-exemplars img")
                page.click("#ila-method >> text=Contrast vs runner-up")
                expect(page.locator("#ila-tab-classify")).to_contain_text("why ")
                page.wait_for_selector("#ila-exemplars img")
                _shoot(page, "classify", tmp_path)

                # correct with the keyboard: "2" takes the second candidate
                page.click("#ila-header")  # focus the page, not a text field
                page.keyboard.press("2")
                page.wait_for_selector(f"#ila-status >> text=labelled {candidate}")
                with studio.store() as store:
                    row = store.image_by_sha256(_sha256(leaf))
                    assert store.current_label(row["id"])["label"] == candidate

                # Review queue
                page.get_by_role("tab", name="Review").click()
                page.click("#ila-review-refresh")
                page.wait_for_selector("#ila-review-message >> text=in the queue")
                _shoot(page, "review", tmp_path)

                # Train: retrain from the button and watch the job card until it succeeds
                page.get_by_role("tab", name="Train").click()
                page.wait_for_selector("#ila-retrain:not([disabled])")
                page.click("#ila-retrain")
                page.wait_for_selector("#ila-train-message >> text=Job 2 queued")
                page.wait_for_selector("#ila-job-card >> text=Job #2", timeout=30_000)
                page.wait_for_selector("#ila-job-card >> text=succeeded", timeout=120_000)
                page.wait_for_selector("#ila-retrain:not([disabled])")
                _shoot(page, "train", tmp_path)

                page.get_by_role("tab", name="Models").click()
                expect(page.locator("#ila-versions")).to_contain_text("v2")
                expect(page.locator("#ila-tab-models")).to_contain_text("compared with")
                _shoot(page, "models", tmp_path)

                page.get_by_role("tab", name="Data").click()
                expect(page.locator("#ila-totals")).to_contain_text("6 cultivars")
                _shoot(page, "data", tmp_path)
            finally:
                browser.close()
        with studio.store() as store:
            assert store.job(2)["status"] == "succeeded"
    assert all((tmp_path / f"{t.lower()}.png").stat().st_size > 10_000 for t in TABS)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
