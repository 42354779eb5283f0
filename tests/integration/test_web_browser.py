"""The web app in a real browser: Debian's chromium driven by Playwright, against the real API (served on a
port), a real worker subprocess and a trained model. Screenshots of every page are saved as test artefacts
(under INFERQ_TEST_SCREENSHOTS when set, else the test's tmp dir)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from bench.web_draw import draw_and_time
from tests.access import make_key
from tests.conftest import fresh_database
from tests.dataset_factories import digits, npz_bytes
from tests.factories import png_bytes
from tests.integration.conftest import WorkerProcess, make_stack_settings, register_artifact_copy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CHROMIUM = os.environ.get("INFERQ_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
if CHROMIUM is None:
    pytest.skip(
        "no chromium found (apt-get install chromium, or set INFERQ_TEST_CHROMIUM); .ci/run installs it",
        allow_module_level=True,
    )
XSS_NAME = "<img src=x onerror=alert(1)>.png"


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where this run's screenshots go."""
    folder = Path(os.environ.get("INFERQ_TEST_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def web(
    tmp_path_factory: pytest.TempPathFactory,
    pg_admin_url: str,
    redis_server_url: str,
    redis_db: int,
    model_artifact: Path,
) -> Iterator[tuple[str, str]]:
    """One real stack for the module's browser tests (a worker costs seconds to start): the API on a free port, a
    worker behind it (every lane, training included), mnist-cnn:2 registered too; yields (URL, key). The tests run
    in this module's order."""
    from api.app import create_app

    with fresh_database(pg_admin_url) as database_url:
        settings = make_stack_settings(
            tmp_path_factory.mktemp("web"), database_url, f"{redis_server_url}/{redis_db}", model_artifact
        )
        register_artifact_copy(settings, model_artifact, version=2)
        worker = WorkerProcess(settings, "--lanes", "interactive,bulk,training,ops")  # the last --lanes counts
        app = create_app(settings)
        httpd = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        try:
            worker.wait_ready()
            key = make_key(app.extensions["inferq"].sessions)
            thread.start()
            yield f"http://127.0.0.1:{httpd.server_port}", key
        finally:
            if thread.is_alive():
                httpd.shutdown()
                thread.join(10)
            worker.stop()
            app.extensions["inferq"].engine.dispose()


@pytest.fixture
def page(web: tuple[str, str]) -> Iterator[Any]:
    """A signed-in chromium page (360 px wide is tested separately); dialogs are recorded, then accepted."""
    url, key = web
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(base_url=url, viewport={"width": 1200, "height": 900})
        pg = context.new_page()
        pg.dialogs = []
        pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.accept()))
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.goto("/")
        assert "/signin" in pg.url
        pg.get_by_label("API key").fill(key)
        pg.get_by_role("button", name="Sign in").click()
        pg.wait_for_url("**/classify")
        yield pg
        assert not pg.errors, pg.errors
        browser.close()


def draw_one(pg: Any) -> None:
    """Draw a '1' on the pad with mouse events: one vertical stroke in the middle."""
    box = pg.locator("#pad").bounding_box()
    x = box["x"] + box["width"] * 0.5
    pg.mouse.move(x, box["y"] + box["height"] * 0.15)
    pg.mouse.down()
    for i in range(1, 21):
        pg.mouse.move(x + i * 0.3, box["y"] + box["height"] * (0.15 + 0.035 * i))
    pg.mouse.up()


def test_drawing_a_digit_shows_its_label_and_heat_map(page: Any, shots: Path) -> None:
    """A stroke drawn with the mouse is classified as soon as the pen lifts: label, top-k bars and a heat-map. The
    page asks `Prefer: wait`, so the job comes back finished from its POST (201) without a poll."""
    answers: list[tuple[str, str, int]] = []
    page.on("response", lambda r: answers.append((r.request.method, r.url, r.status)) if "/v1/jobs" in r.url else None)
    draw_one(page)
    pred = page.locator("#results .pred").first
    pred.locator(".label").wait_for(timeout=30_000)
    assert pred.locator(".label").inner_text() == "1"
    assert pred.locator(".bars li").count() == 3
    heat = pred.locator("canvas.heat")
    heat.wait_for()
    painted = heat.evaluate(
        "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
        ".filter((v, i) => i % 4 === 0 && v > 0).length"
    )
    assert painted > 0
    assert "Done" in page.locator("#status").inner_text()
    assert [(method, status) for method, _url, status in answers] == [("POST", 201)], answers
    page.screenshot(path=str(shots / "classify.png"), full_page=True)


def test_a_drawn_three_is_read_as_3_with_its_heat_map(page: Any, shots: Path) -> None:
    """The issue's own check: a 3 drawn with the mouse comes back as "3" with a painted heat-map. The time from
    lifting the pen to the painted heat-map is printed (this stack shares 2 cores with the rest of the suite: a
    measurement, not an assertion; bench/web_draw.py measures it on a running `up`)."""
    elapsed, label = draw_and_time(page)
    print(f"drawn 3: label and heat-map {elapsed:.3f} s after the pen lifted")
    assert label == "3"
    page.screenshot(path=str(shots / "classify-3.png"), full_page=True)


def test_a_hostile_filename_is_shown_as_text(page: Any, shots: Path) -> None:
    """A file named like an <img> tag with an onerror handler appears as its literal name; nothing runs."""
    page.locator("#files").set_input_files([{"name": XSS_NAME, "mimeType": "image/png", "buffer": png_bytes()}])
    name = page.locator("#results .pred .fname").first
    name.wait_for(timeout=30_000)
    assert name.inner_text() == XSS_NAME
    assert page.locator("#results img[src='x']").count() == 0 and page.dialogs == []
    page.screenshot(path=str(shots / "classify-files.png"), full_page=True)


def test_the_jobs_pages_list_and_detail_a_job(page: Any, shots: Path) -> None:
    """The job sent from the Classify page is listed, succeeded; its page shows facts and predictions."""
    draw_one(page)
    page.locator("#results .pred .label").first.wait_for(timeout=30_000)
    page.get_by_role("link", name="Jobs", exact=True).click()
    row = page.locator("#jobs tbody tr[data-status='succeeded']").first
    row.wait_for()
    page.screenshot(path=str(shots / "jobs.png"), full_page=True)
    row.locator("a").click()
    page.locator("#results .pred").first.wait_for(timeout=30_000)
    assert "succeeded" in page.locator("#facts").inner_text() and "mnist-cnn:1" in page.locator("#facts").inner_text()
    page.screenshot(path=str(shots / "job.png"), full_page=True)


def test_promoting_a_version_moves_production_after_a_confirmation(
    page: Any, shots: Path, web: tuple[str, str]
) -> None:
    """'Make production' on version 2 asks first, then the alias points at 2 (read back through the API)."""
    page.get_by_role("link", name="Models", exact=True).click()
    button = page.locator("button.promote[data-version='2']")
    button.wait_for()
    page.screenshot(path=str(shots / "models.png"), full_page=True)
    button.click()
    page.locator("button.promote[data-version='2'][disabled]").wait_for()
    assert page.dialogs and "version 2" in page.dialogs[-1]
    url, key = web
    model = requests.get(f"{url}/v1/models/mnist-cnn", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert model.json()["aliases"]["production"] == 2


def test_a_training_started_from_the_form_draws_its_curves_and_adds_a_version(page: Any, shots: Path) -> None:
    """The training form queues a job; its loss and accuracy curves grow by a point per epoch, and the finished
    version appears in the table (versions 1 and 2 exist: it is 3)."""
    page.get_by_role("link", name="Models", exact=True).click()
    page.locator("button.promote").first.wait_for()
    page.get_by_label("Epochs (most)").fill("3")
    page.get_by_label("Batch size").fill("64")
    page.get_by_label("Augmentation").select_option("none")
    page.get_by_label("Training images (blank: all)").fill("300")
    page.get_by_role("button", name="Start training").click()
    page.locator("#train-facts dd", has_text="succeeded").wait_for(timeout=240_000)
    for metric in ("loss", "accuracy"):
        curve = page.locator(f"#curves svg.curve[data-metric='{metric}']")
        assert curve.locator("circle.s0").count() == 3, metric  # one point per epoch, training and validation
        assert curve.locator("circle.s1").count() == 3, metric
    assert "3 of 3" in page.locator("#train-facts").inner_text()
    page.locator("button.promote[data-version='3']").wait_for()
    assert "mnist-cnn:3" in page.locator("#status").inner_text()
    page.screenshot(path=str(shots / "training.png"), full_page=True)


def test_a_dataset_is_uploaded_scored_and_its_confusion_matrix_drawn(page: Any, shots: Path) -> None:
    """Upload a labelled .npz with a progress bar, score it, watch it finish with downloads and a confusion matrix."""
    x, y = digits(40)
    page.get_by_role("link", name="Datasets", exact=True).click()
    page.locator("#ds-file").set_input_files(
        [{"name": "bars.npz", "mimeType": "application/octet-stream", "buffer": npz_bytes(x=x, y=y)}]
    )
    page.get_by_role("button", name="Upload").click()
    page.locator("#datasets tbody tr th.name", has_text="bars.npz").wait_for(timeout=30_000)
    assert "40 items" in page.locator("#status").inner_text()
    page.locator("#datasets tbody tr button.score").first.click()
    page.locator("#score-facts dd", has_text="succeeded").wait_for(timeout=120_000)
    assert page.locator("#score-facts a.file").count() >= 1 and "40 of 40" in page.locator("#score-facts").inner_text()
    assert page.locator("#confusion svg rect").count() >= 1
    page.screenshot(path=str(shots / "datasets.png"), full_page=True)


def test_webhook_endpoints_are_added_rotated_and_deleted(page: Any, shots: Path) -> None:
    """An endpoint is added (its secret shown once), its secret rotated after a confirmation, then deleted."""
    page.get_by_role("link", name="Webhooks", exact=True).click()
    page.get_by_label("Endpoint URL").fill("https://hooks.example.com/inferq")
    page.get_by_role("button", name="Add endpoint").click()
    row = page.locator("#endpoints tbody tr", has_text="https://hooks.example.com/inferq")
    row.wait_for()
    first = page.locator("#secret").inner_text()
    assert first.startswith("whsec_")
    page.screenshot(path=str(shots / "webhooks.png"), full_page=True)
    row.get_by_role("button", name="Rotate secret").click()
    page.wait_for_function("s => document.getElementById('secret').textContent !== s", arg=first)
    assert page.locator("#secret").inner_text().startswith("whsec_")
    row.get_by_role("button", name="Delete").click()
    row.wait_for(state="detached")
    assert [d for d in page.dialogs if "Rotate" in d or "Delete" in d] and not page.errors


def test_the_pages_fit_a_phone_and_work_from_the_keyboard(page: Any, shots: Path) -> None:
    """At 360 px nothing scrolls sideways; Tab reaches the page's controls, each with a label."""
    page.set_viewport_size({"width": 360, "height": 740})
    for name in ("classify", "jobs", "datasets", "models", "webhooks"):
        page.goto(f"/{name}")
        page.wait_for_load_state("networkidle")
        assert page.evaluate("document.documentElement.scrollWidth") <= 360, name
        page.screenshot(path=str(shots / f"{name}-360.png"), full_page=True)
    page.goto("/classify")
    unlabeled = page.evaluate(
        "Array.from(document.querySelectorAll('input, select')).filter(e => e.type !== 'hidden' && "
        "!e.labels?.length && !e.getAttribute('aria-label')).map(e => e.id)"
    )
    assert unlabeled == []
    focused = set()
    for _ in range(25):
        page.keyboard.press("Tab")
        focused.add(page.evaluate("document.activeElement.id"))
    assert {"pad", "send-drawing", "drop", "files", "explain"} <= focused
