"""The comparison app in a real browser: Debian chromium driven by Python playwright (no browser download).

CI installs chromium with apt-get (.ci/run); without /usr/bin/chromium the test is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

from rglcd.demo import COLUMNS, Engine, build_app  # noqa: E402
from rglcd.testing import CHROMIUM, capture_page, launch_local  # noqa: E402

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian chromium at {CHROMIUM} "
                                "(apt-get install -y chromium; .ci/run does)")


def test_default_prompt_legend_best_marker_and_plot(tmp_path: Path) -> None:
    """Press Compare on the shipped family's page as it opens (its default prompt), then draw the plot.
    `RGLCD_SCREENSHOT=assets/samples/app-screenshot.png` keeps the screenshot there (the README's)."""
    pytest.importorskip("playwright.sync_api", reason="needs the playwright package (requirements.txt)")
    torch.set_num_threads(1)
    shot = Path(os.environ.get("RGLCD_SCREENSHOT") or tmp_path / "app.png")
    app = build_app(Engine("emoji-64"))
    try:
        page = capture_page(launch_local(app), None, shot, plot=True)
    finally:
        app.close()
    assert page["prompt"] == "banana"
    assert page["status"].startswith("Done") and "loading the models, first use" in page["status"]
    assert page["images"] == {c: 1 for c in COLUMNS} and page["image_sizes"] == {c: [256] for c in COLUMNS}
    assert all("emoji" in page["captions"][c] and "NFE" in page["captions"][c] for c in COLUMNS)
    assert sum(page["captions"][c].startswith("★ best") for c in COLUMNS) == 1
    assert page["legend"].startswith("Rewards, higher is better: emoji = 100 x cosine")
    assert not page["plot_shown_before"] and page["plot_images"] == 1
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
