"""The page in a real browser against the real local stack: storage emulator, both functions
under functions-framework, the router serving web/, and the real EfficientNet-Lite weights."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from imgclassify.store.objects import GcsStore
from tests.support.photos import cat_jpeg, coffee_jpeg, encode, real_photo
from tests.web.browser import ANSWER_TIMEOUT_MS, ARTIFACTS, top_label, transfer_handle, write_file

pytestmark = pytest.mark.integration

MODELS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
CAT = re.compile("cat", re.IGNORECASE)
ALLOWED_BUCKET = "photos-allowed"  # the stack fixture's ALLOWED_GCS_BUCKETS


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("photos")
    return {
        "cat": write_file(folder, "chelsea.jpg", cat_jpeg()),
        "coffee": write_file(folder, "coffee.jpg", coffee_jpeg()),
        "text": write_file(folder, "holiday.jpg", b"Shopping list: milk, bread, eggs. Not a photo at all.\n"),
    }


def model_select(page: Page):
    return page.get_by_label("Model", exact=True)


def give_file(page: Page, path) -> None:
    page.locator("#file-input").set_input_files(path)


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(0, 0)  # no hover highlight in the picture
    page.wait_for_timeout(300)  # let the hover transition finish
    page.screenshot(path=ARTIFACTS / name, full_page=True)


def test_a_person_picks_a_model_uploads_a_photo_and_sees_labels_as_bars_with_model_version_and_time(
        stack, open_page, photos):
    page = open_page(stack.url, viewport={"width": 1280, "height": 900})
    options = model_select(page).locator("option")
    expect(options).to_have_text(["efficientnet_lite0 (v1, default)", "efficientnet_lite1 (v1)",
                                  "efficientnet_lite2 (v1)"])

    with page.expect_file_chooser() as chooser:  # waiting starts early: interception is turned on asynchronously
        model_select(page).select_option("efficientnet_lite0")
        details = page.locator("#model-details")
        expect(details).to_contain_text("EfficientNet-Lite0 ImageNet classifier")
        expect(details).to_contain_text("224 × 224 px")
        expect(details).not_to_contain_text("untrained")
        page.get_by_text("Choose a photo", exact=True).click()
    chooser.value.set_files(photos["cat"])

    result = page.locator("#result")
    expect(result.get_by_role("img", name="The image you gave: chelsea.jpg")).to_be_visible()
    expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)
    expect(result.get_by_role("list", name="Labels, most likely first").get_by_role("listitem")).to_have_count(5)
    expect(result.locator(".prediction-score").first).to_have_text(re.compile(r"^\d{1,3}\.\d%$"))
    top_bar, second_bar = (result.locator(".prediction-fill").nth(i).bounding_box()["width"] for i in (0, 1))
    assert top_bar >= second_bar > 0
    expect(result.locator(".answer-model")).to_have_text("efficientnet_lite0")
    expect(result.locator(".answer-version")).to_have_text("version 1")
    expect(result.locator(".timing-line")).to_contain_text(re.compile(r"[\d.]+ m?s on the server, [\d.]+ m?s in all"))
    expect(result.locator(".timing-line .badge")).to_have_text(re.compile(r"^(warm|cold start)$"))
    expect(result.locator(".preview figcaption")).to_contain_text("451 × 300")
    expect(page.get_by_role("status")).to_contain_text(re.compile(r"^efficientnet_lite0 version 1: .*cat", re.I))
    expect(page.locator("#error")).to_be_empty()
    screenshot(page, "web-result.png")


def test_the_model_choice_is_kept_per_browser_across_reloads_and_sent_with_each_request(stack, open_page, photos):
    alice = open_page(stack.url)
    bob = open_page(stack.url)
    model_select(alice).select_option("efficientnet_lite1")
    model_select(bob).select_option("efficientnet_lite2")

    alice.reload()
    bob.reload()
    expect(model_select(alice)).to_have_value("efficientnet_lite1")
    expect(model_select(bob)).to_have_value("efficientnet_lite2")
    expect(alice.locator("#model-details")).to_contain_text("240 × 240 px")

    with alice.expect_request(lambda request: ":classify" in request.url) as sent:
        give_file(alice, photos["cat"])
    assert "/v1/models/efficientnet_lite1:classify" in sent.value.url
    expect(alice.locator("#result .answer-model")).to_have_text("efficientnet_lite1", timeout=ANSWER_TIMEOUT_MS)
    expect(top_label(alice)).to_contain_text(CAT)

    with bob.expect_request(lambda request: ":classify" in request.url) as sent:
        give_file(bob, photos["cat"])
    assert "/v1/models/efficientnet_lite2:classify" in sent.value.url
    expect(bob.locator("#result .answer-model")).to_have_text("efficientnet_lite2", timeout=ANSWER_TIMEOUT_MS)
    expect(model_select(alice)).to_have_value("efficientnet_lite1")  # Bob's choice never reaches Alice

    newcomer = open_page(stack.url)
    expect(model_select(newcomer)).to_have_value("efficientnet_lite0")  # the service's default


def test_compare_runs_the_image_through_every_listed_model_side_by_side(stack, open_page, photos):
    page = open_page(stack.url, viewport={"width": 1280, "height": 900})
    give_file(page, photos["cat"])
    expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)

    page.get_by_role("button", name="Compare all models").click()
    section = page.get_by_role("region", name="Every model, side by side")
    expect(section).to_be_visible()
    cards = page.locator("#compare-grid > .card")
    expect(cards).to_have_count(len(MODELS))
    for name in MODELS:
        card = page.locator(f'.card[data-model="{name}"]')
        expect(card.locator(".card-name")).to_have_text(name)
        expect(card.locator(".prediction-label").first).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)
        expect(card.locator(".card-version")).to_have_text("v1")
        expect(card.locator(".timing-line")).to_contain_text("on the server")
    expect(page.locator("#compare-summary")).to_contain_text(re.compile(r"All 3 models that answered put|disagree"))
    # Read in one go: the page may still be scrolling to the section, which moves every box.
    tops = set(page.eval_on_selector_all("#compare-grid > .card",
                                         "cards => cards.map(card => Math.round(card.getBoundingClientRect().top))"))
    assert len(tops) == 1, "on a wide screen the cards sit side by side"
    screenshot(page, "web-compare.png")

    give_file(page, photos["coffee"])  # a new image refreshes the open comparison
    for name in MODELS:
        expect(page.locator(f'.card[data-model="{name}"] .prediction-label').first).to_have_text(
            "espresso", timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#compare-summary")).to_contain_text("put espresso first")

    page.get_by_role("button", name="Hide comparison").click()
    expect(section).to_be_hidden()
    expect(page.get_by_role("button", name="Compare all models")).to_be_focused()


def test_a_text_file_renamed_jpg_and_a_plain_text_file_read_as_not_an_image(stack, open_page, photos):
    page = open_page(stack.url)
    give_file(page, photos["text"])
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("This file is not an image the service can read. Choose a JPEG, PNG, WebP, GIF, "
                                  "BMP or TIFF photo.", timeout=ANSWER_TIMEOUT_MS)
    expect(alert).to_contain_text("UNSUPPORTED_IMAGE_FORMAT")  # the service's own words, as a detail
    expect(page.locator("#result .prediction")).to_have_count(0)

    # A file that says it is text is refused in the browser, with the same sentence, without a request.
    classify_requests = []
    page.on("request", lambda request: classify_requests.append(request) if ":classify" in request.url else None)
    page.locator("#drop-zone").dispatch_event(
        "drop", {"dataTransfer": transfer_handle(page, "notes.txt", "text/plain", b"just words")})
    expect(alert).to_have_text(re.compile(r"^This file is not an image the service can read\."))
    assert classify_requests == []

    give_file(page, photos["cat"])  # and the next real photo clears the error
    expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#error")).to_be_empty()


def test_a_photo_dragged_onto_the_drop_zone_is_classified(stack, open_page):
    page = open_page(stack.url)
    zone = page.locator("#drop-zone")
    transfer = transfer_handle(page, "chelsea.jpg", "image/jpeg", cat_jpeg())

    zone.dispatch_event("dragenter", {"dataTransfer": transfer})
    zone.dispatch_event("dragover", {"dataTransfer": transfer})
    expect(zone).to_have_class(re.compile(r"\bdragging\b"))
    zone.dispatch_event("drop", {"dataTransfer": transfer})

    expect(zone).not_to_have_class(re.compile(r"\bdragging\b"))
    expect(page.get_by_role("img", name="The image you gave: chelsea.jpg")).to_be_visible()
    expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)


def test_a_photo_pasted_from_the_clipboard_is_classified(stack, open_page):
    page = open_page(stack.url)
    transfer = transfer_handle(page, "image.png", "image/png", encode(real_photo("chelsea"), "PNG"))
    page.evaluate("""(transfer) => document.body.dispatchEvent(
        new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true}))""", transfer)
    expect(page.get_by_role("img", name="The image you gave: pasted image")).to_be_visible()
    expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)


def test_the_camera_button_asks_a_phone_for_its_back_camera_and_classifies_the_shot(stack, open_page, photos):
    page = open_page(stack.url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    camera = page.get_by_label("Take a photo")
    expect(camera).to_have_attribute("capture", "environment")
    expect(camera).to_have_attribute("accept", "image/*")
    camera.set_input_files(photos["cat"])
    expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)


def test_gs_uris_and_links_are_sent_for_the_service_to_read_and_refusals_read_as_sentences(
        stack, emulator, open_page):
    emulator.create_bucket(ALLOWED_BUCKET)
    GcsStore(ALLOWED_BUCKET).write("web/chelsea.jpg", cat_jpeg())
    page = open_page(stack.url)
    address = page.get_by_label("Or an image address")
    submit = page.get_by_role("button", name="Classify", exact=True)
    alert = page.get_by_role("alert")

    address.fill(f"gs://{ALLOWED_BUCKET}/web/chelsea.jpg")
    with page.expect_request(lambda request: ":classify" in request.url) as sent:
        submit.click()
    assert sent.value.post_data_json == {"instances": [{"gcs_uri": f"gs://{ALLOWED_BUCKET}/web/chelsea.jpg"}]}
    expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#result figcaption")).to_contain_text("Read by the service from Cloud Storage")

    address.fill(f"gs://{ALLOWED_BUCKET}/web/missing.jpg")
    submit.click()
    expect(alert).to_contain_text("There is no image at that address.")

    address.fill("gs://someone-elses-bucket/cat.jpg")
    submit.click()
    expect(alert).to_contain_text("The service is not allowed to read images from that bucket.")

    address.fill("https://127.0.0.1:9/cat.jpg")  # the service fetches public addresses only
    submit.click()
    expect(alert).to_contain_text("The service does not fetch images from that address.")

    address.fill("ftp://example.com/cat.jpg")
    submit.click()
    expect(alert).to_have_text(re.compile(r"^That is not an address the page can use\."))
    expect(address).to_have_attribute("aria-invalid", "true")
    expect(address).to_be_focused()


def test_a_12_megapixel_photo_is_downscaled_in_the_browser_and_still_reads_as_a_cat(stack, open_page, tmp_path):
    # A phone photo: 4240 × 2824 pixels with sensor noise, stored sideways with EXIF orientation 6.
    upright = Image.fromarray(real_photo("chelsea")).resize((4240, 2824), Image.Resampling.LANCZOS)
    noisy = np.clip(np.asarray(upright, dtype=np.int16) + np.random.default_rng(0).normal(0, 4, (2824, 4240, 3)),
                    0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(noisy).transpose(Image.Transpose.ROTATE_90)
    original = encode(stored, "JPEG", quality=92, exif=exif.tobytes())
    path = write_file(tmp_path, "IMG_0001.jpg", original)

    page = open_page(stack.url)
    with page.expect_request(lambda request: ":classify" in request.url) as sent:
        give_file(page, path)
    request = sent.value
    uploaded_bytes = int(request.all_headers()["content-length"])  # what went over the wire

    assert request.headers["content-type"] == "image/jpeg"
    assert uploaded_bytes * 10 < len(original), (uploaded_bytes, len(original))
    expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)
    # Upright (EXIF applied), the shorter side twice the largest model input (2 × 260).
    expect(page.locator("#result figcaption")).to_contain_text(
        re.compile(r"4240 × 2824, [\d.]+ MB; made smaller to 781 × 520, \d+ kB sent"))


def test_keyboard_alone_reaches_the_model_and_the_file_picker_and_results_are_announced(
        stack, open_page, photos):
    page = open_page(stack.url)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the image")).to_be_focused()
    for _ in range(3):
        page.keyboard.press("Tab")
        if model_select(page).evaluate("element => element === document.activeElement"):
            break
    expect(model_select(page)).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(model_select(page)).to_have_value("efficientnet_lite1")

    # Waiting for the chooser starts early: Playwright turns interception on asynchronously.
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Tab")
        expect(page.get_by_label("Labels to show")).to_be_focused()
        page.keyboard.press("Tab")
        file_input = page.get_by_label("Choose a photo")
        expect(file_input).to_be_focused()
        expect(page.locator('label[for="file-input"]')).to_have_css("outline-style", "solid")  # focus is visible
        expect(file_input).to_have_accessible_description(re.compile("Drop a photo here"))
        page.keyboard.press("Enter")
    chooser.value.set_files(photos["cat"])

    expect(page.get_by_role("status")).to_contain_text(re.compile(r"^efficientnet_lite1 version 1: .*cat", re.I),
                                                       timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#result")).to_have_attribute("aria-busy", "false")
    expect(file_input).to_be_focused()  # the answer does not steal focus


@pytest.mark.parametrize("viewport, screenshot_name", [
    ({"width": 390, "height": 844}, "web-phone-dark.png"),
    ({"width": 1280, "height": 900}, "web-result-dark.png"),
])
def test_the_page_fits_a_phone_and_follows_a_dark_colour_scheme(stack, open_page, photos, viewport,
                                                               screenshot_name):
    phone = viewport["width"] < 500
    page = open_page(stack.url, viewport=viewport, color_scheme="dark", is_mobile=phone, has_touch=phone)
    give_file(page, photos["cat"])
    expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)

    expect(page.locator("body")).to_have_css("background-color", "rgb(13, 17, 23)")
    expect(page.locator("body")).to_have_css("color", "rgb(230, 237, 243)")
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], "no sideways scrolling"
    if phone:
        # Under the full-width photo the answer starts below the fold: it is brought into view.
        for rank in range(3):
            expect(page.locator("#result .prediction").nth(rank)).to_be_in_viewport(ratio=1)
        assert page.locator('label[for="file-input"]').bounding_box()["height"] >= 44  # a finger-sized target
    screenshot(page, screenshot_name)
