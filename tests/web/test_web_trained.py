"""A trained classifier on the page: its held-out evaluation shown for the chosen model."""

from __future__ import annotations

import pytest
import requests
from playwright.sync_api import expect

from imgclassify.publish.catalog_writes import remove
from imgclassify.publish.training import train_classifier
from imgclassify.store.objects import GcsStore
from tests.support.digits import write_digit_folder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(stack, models_bucket, tmp_path_factory):
    """A small digits classifier in the stack's bucket, removed afterwards."""
    store = GcsStore(models_bucket)
    folder = tmp_path_factory.mktemp("digits")
    write_digit_folder(folder, 80)
    result = train_classifier(store, str(folder), name="digits_web", log=lambda _: None)
    # an unknown name makes the listing function re-read the catalog at once
    assert requests.get(f"{stack.url}/v1/models/digits_web", timeout=60).status_code == 200
    yield result
    remove(store, "digits_web", result.manifest.version)


def test_the_page_shows_a_trained_classifiers_held_out_evaluation(stack, open_page, trained):
    page = open_page(stack.url, viewport={"width": 1280, "height": 900})
    evaluation = page.locator("#model-evaluation")
    expect(page.get_by_label("Model", exact=True).locator("option")).to_contain_text(["digits_web (v1)"])
    expect(evaluation).to_be_empty()  # the default, Lite0, was trained elsewhere: nothing to show

    page.get_by_label("Model", exact=True).select_option("digits_web")
    figures = trained.evaluation
    expect(evaluation.get_by_role("heading")).to_have_text(
        f"Held-out accuracy {figures['accuracy'] * 100:.1f}% on {figures['images']} images")
    per_label = evaluation.get_by_role("table", name="Per label")
    expect(per_label.locator("tbody tr")).to_have_count(10)
    first = figures["per_label"][0]
    expect(per_label.locator("tbody tr").first).to_have_text(
        f"{first['label']}{first['precision'] * 100:.1f}%{first['recall'] * 100:.1f}%{first['images']}")
    matrix = evaluation.get_by_role("table", name="Confusion matrix (rows: true label, columns: predicted)")
    expect(matrix.locator("tbody tr")).to_have_count(10)
    expect(matrix.locator("tbody tr").nth(3).locator("td")).to_have_text(
        [str(count) for count in figures["confusion_matrix"][3]])

    page.get_by_label("Model", exact=True).select_option("efficientnet_lite1")
    expect(evaluation).to_be_empty()
