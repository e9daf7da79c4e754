"""Helpers of the browser tests: files to give the page, drag-and-drop payloads, locators."""

from __future__ import annotations

import base64
from pathlib import Path

from playwright.sync_api import JSHandle, Locator, Page

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# A cold model on a busy machine takes seconds (a person would wait too).
ANSWER_TIMEOUT_MS = 120_000


def write_file(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def transfer_handle(page: Page, name: str, mime: str, data: bytes) -> JSHandle:
    """A DataTransfer holding one File, built inside the page (what a real drag or paste carries)."""
    return page.evaluate_handle(
        """([encoded, name, type]) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type}));
            return transfer;
        }""",
        [base64.b64encode(data).decode(), name, mime],
    )


def top_label(page: Page) -> Locator:
    """The first label of the single-model result."""
    return page.locator("#result .prediction").first.locator(".prediction-label")
