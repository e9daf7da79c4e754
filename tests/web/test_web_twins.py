"""int8 twins on the page: the compare view puts each twin beside its source, in one row, with a
line comparing their answers and forward times (a real twin, quantized and measured here)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import requests
from playwright.sync_api import expect

from imgclassify.publish.catalog_writes import remove
from imgclassify.publish.quantize import RECIPE, publish_int8_twin
from imgclassify.store.objects import GcsStore
from tests.support.photos import coffee_jpeg
from tests.web.browser import ANSWER_TIMEOUT_MS, write_file
from tests.web.test_web_page import give_file, model_select, screenshot

pytestmark = pytest.mark.integration

SOURCE = "efficientnet_lite0"
TWIN = f"{SOURCE}_int8"


@pytest.fixture(scope="module")
def twin(stack, models_bucket):
    """Lite0's int8 twin in the stack's bucket (a small calibration: this is about the page), removed afterwards."""
    store = GcsStore(models_bucket)
    manifest = publish_int8_twin(store, SOURCE, recipe=replace(RECIPE, calibration_crops=32),
                                 min_top1_agreement=0.9, log=lambda _: None)
    # an unknown name makes the listing function re-read the catalog at once
    assert requests.get(f"{stack.url}/v1/models/{TWIN}", timeout=60).status_code == 200
    yield manifest
    remove(store, TWIN, manifest.version)


def test_compare_puts_the_int8_twin_beside_its_source_with_a_line_comparing_their_answers(
        stack, open_page, twin, tmp_path):
    page = open_page(stack.url, viewport={"width": 1280, "height": 900})
    expect(model_select(page).locator("option")).to_contain_text([f"{TWIN} (v{twin.version}, int8)"])
    give_file(page, write_file(tmp_path, "coffee.jpg", coffee_jpeg()))
    expect(page.locator("#result .prediction-label").first).to_have_text("espresso", timeout=ANSWER_TIMEOUT_MS)

    page.get_by_role("button", name="Compare all models").click()
    pair = page.get_by_role("list", name=f"{SOURCE} and its int8 twin, side by side")
    cards = pair.locator(".card")
    expect(cards.locator(".card-name")).to_have_text([SOURCE, TWIN])
    expect(cards.nth(1).locator(".badge")).to_have_text("int8")
    for index in (0, 1):
        expect(cards.nth(index).locator(".prediction-label").first).to_have_text("espresso", timeout=ANSWER_TIMEOUT_MS)
    verdict = page.locator(f'.compare-pair[data-source="{SOURCE}"] .pair-verdict')
    expect(verdict).to_contain_text(f"{TWIN} puts espresso first, as {SOURCE} does; inference ")
    expect(verdict).to_contain_text(" ms against ")
    # the models without a twin keep their own cards
    expect(page.locator("#compare-grid > .card .card-name")).to_have_text(["efficientnet_lite1", "efficientnet_lite2"])
    tops = page.eval_on_selector_all(f'.compare-pair[data-source="{SOURCE}"] .card',
                                     "cards => cards.map(card => Math.round(card.getBoundingClientRect().top))")
    assert len(tops) == 2 and len(set(tops)) == 1, "the twin sits beside its source"
    expect(page.locator("#compare-summary")).to_contain_text("All 4 models that answered put espresso first")
    screenshot(page, "web-compare-twins.png")
