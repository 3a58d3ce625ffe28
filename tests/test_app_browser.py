"""The comparison app in a real browser: Debian chromium driven by Python playwright (no browser download).

CI installs chromium with apt-get (.ci/run); without /usr/bin/chromium the test is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

from rglcd.demo import CHROMIUM, COLUMNS, Engine, build_app, capture_page, launch_local, stand_in_family  # noqa: E402

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian chromium at {CHROMIUM} "
                                "(apt-get install -y chromium; .ci/run does)")


def test_page_shows_four_images_and_their_scores(tmp_path: Path) -> None:
    pytest.importorskip("playwright.sync_api", reason="needs the playwright package (requirements.txt)")
    torch.set_num_threads(1)
    family = stand_in_family("emoji-64", tmp_path / "family", {"rg-lcm": "lcm", "mlcm": "lcm"}, override=True)
    app = build_app(Engine(str(family)))
    try:
        page = capture_page(launch_local(app), "pizza", tmp_path / "app.png", plot=True)
    finally:
        app.close()
    assert page["status"].startswith("Done")
    assert page["images"] == {c: 1 for c in COLUMNS}
    assert all("emoji" in page["captions"][c] and "NFE" in page["captions"][c] for c in COLUMNS)
    assert (tmp_path / "app.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
