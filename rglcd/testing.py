"""Harness for tests and benches of the app: a family file with stand-in members, a local server on a free port,
and a real browser driving the page.
"""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rglcd.demo.engine import COLUMNS
from rglcd.models import ModelLoadError, load_family, relocated_spec


def stand_in_family(family: str, out_dir: Path, stand_ins: dict[str, str], override: bool = False) -> Path:
    """Write a copy of a local family file into `out_dir` (its paths still naming the same folders), where each
    column in `stand_ins` that the family lacks (every one of them with `override`) is a copy of another member's
    entry (e.g. {"rg-lcm": "lcm"}): four columns before every student is trained, for tests and benches. Returns the
    new family.json; stand-ins are marked with "stand_in_for" and "copied_from"."""
    source = load_family(family)
    if source.root is None:
        raise ModelLoadError(f"family '{family}' is not a local family file")
    spec = relocated_spec(source, out_dir)
    members = spec["members"]
    for column, donor in stand_ins.items():
        if override or column not in members:
            members[column] = dict(members[donor], stand_in_for=column, copied_from=donor)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "family.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def launch_local(app: Any) -> str:
    """Start a built app on 127.0.0.1 at a free port without blocking; returns its URL (stop with `app.close()`)."""
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def capture_page(url: str, prompt: str | None, screenshot: Path, columns: Sequence[str] = COLUMNS,
                 chromium: Path = CHROMIUM, plot: bool = False, timeout_s: float = 120.0) -> dict[str, Any]:
    """Drive the page in a real browser (Python playwright on a system chromium, no browser download): type
    `prompt` (None: keep the page's default), press Compare, wait until the run is done (with `plot`, also draw the
    reward-vs-steps plot), save a full-page PNG screenshot. The profile (`--user-data-dir`) is a fresh temporary
    folder. Returns what the page shows: {"prompt": the prompt box's text, "images": column -> number of images,
    "image_sizes": column -> [natural width of each image], "captions": column -> caption text, "status",
    "legend": the legend's text, "plot_shown_before": whether a plot box was visible before drawing,
    "plot_images": images in the plot box after drawing}."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=str(chromium), headless=True,
                                                        args=list(CHROMIUM_FLAGS),
                                                        viewport={"width": 1280, "height": 900})
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url)
            box = page.locator("#prompt textarea")
            if prompt is not None:
                box.fill(prompt)
            plot_box = page.locator("#reward-plot")
            shown_before = plot_box.count() > 0 and plot_box.first.is_visible()
            page.locator("#compare").click()
            page.wait_for_function("document.querySelector('#status')?.innerText.includes('Done')")
            page.wait_for_function("[...document.querySelectorAll('[id^=gallery-] img')].every(i => i.complete)")
            if plot:
                page.locator("#plot-button").click()
                page.wait_for_function("document.querySelector('#plot-status')?.innerText.includes('Reward')")
                page.locator("#reward-plot img").first.wait_for()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            return {"prompt": box.input_value(),
                    "images": {c: page.locator(f"#gallery-{c} img").count() for c in columns},
                    "image_sizes": {c: page.locator(f"#gallery-{c} img").evaluate_all(
                        "images => images.map(i => i.naturalWidth)") for c in columns},
                    "captions": {c: page.locator(f"#caption-{c}").inner_text() for c in columns},
                    "status": page.locator("#status").inner_text(),
                    "legend": page.locator("#legend").inner_text(),
                    "plot_shown_before": shown_before,
                    "plot_images": page.locator("#reward-plot img").count()}
        finally:
            browser.close()

