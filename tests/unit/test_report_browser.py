"""report.html in a real browser: headless Chromium (the system one) driven by Playwright.

A synthetic sweep (baseline, two RCS trials, a stopped trial) is rendered with the report's own
functions, so every section and figure exists. The page is opened via file:// with every request
routed: anything that is not file:// is recorded and aborted, and none may occur. Each section
heading of report.md must be a visible <h2>, each <img> must have decoded (naturalWidth > 0),
no console error, one table per markdown table; a full-page screenshot is taken.

Skipped, with the reason, without the ``browser`` extra (``pip install -e ".[browser]"``) or a
system Chromium (``apt-get install chromium-headless-shell``, or ``make test`` as root). Never
``playwright install``: no browser is downloaded. ``REPORT_CHROMIUM=/path`` picks the executable.

The docs screenshot: ``python tests/unit/test_report_browser.py docs/report_screenshot.png [REPORT_DIR]``
(default: the synthetic report).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # when run as a script
    sys.path.insert(0, str(ROOT))

from pipeline.report.collect import collect  # noqa: E402
from pipeline.report.cost import parse_prices  # noqa: E402
from pipeline.report.render import SECTION_TITLES, ReportPaths, render_report  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PRICES = parse_prices({"currency": "USD", "as_of": "2026-11-26", "gpu_hour": {"H100": 4.0},
                       "cpu_core_hour": 0.5}, "test-prices")
TIMEOUT_MS = 60_000  # Chromium on a loaded 2-core machine


def find_chromium() -> Optional[str]:
    env = os.environ.get("REPORT_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


# ----------------------------------------------------------------------------------------------
# A synthetic sweep with every section: baseline + 2 RCS trials (metrics, evals) + a stopped one
# ----------------------------------------------------------------------------------------------


def _run(d: Path, name: str, *, rcs: bool, k: float, full_t: float, accs: dict) -> str:
    """A finished 6-epoch run; RCS epochs after the 2 warm-up ones take k x ``full_t`` (+ selection)."""
    d.mkdir(parents=True)
    epochs = 6
    config = {"model": {"arch": "resnet18", "width": 16}, "attack": {"steps": 5}, "loss": {"mode": "acl"},
              "rcs": {"enabled": rcs, "fraction": k, "warmup_epochs": 2, "interval": 2, "pgd_steps": 3},
              "train": {"epochs": epochs},
              "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1.0}}
    (d / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    rows, sels, t = [], [], 0.0
    for e in range(1, epochs + 1):
        sel = 12.0 if rcs and e > 2 and e % 2 == 1 else 0.0
        et = full_t if (not rcs or e <= 2) else full_t * k + sel
        t += et
        loss = 6.0 - 0.6 * e + (0.2 if rcs else 0.0)
        rows.append({"epoch": e, "loss": loss, "cl_nat": loss / 2, "cl_adv": loss / 2, "sir": None, "air": None,
                     "lr": 0.5 / e, "images_per_s": 200.0, "epoch_time_s": et, "strength": 1.0, "omega": 0.0,
                     "train_samples": 100 if et == full_t else int(100 * k), "coreset_size": None,
                     "selection_time_s": sel, "wall_time_s": t})
        if sel:
            sels.append({"epoch": e, "size": int(100 * k), "time_s": sel})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps({
        "run_name": name, "mode": "acl", "status": "finished", "num_workers": 2, "use_gpu": False,
        "gpu_type": None, "cpus_per_worker": 1.0, "gpu_hours": 0.0, "encoder": "encoder.pt",
        "epochs": epochs, "wall_time_s": t, "worker_hours": 2 * t / 3600,
        "rcs": {"enabled": rcs, "fraction": k, "warmup_epochs": 2, "interval": 2, "selections": sels}}))
    for mode, (clean, pgd, aa) in accs.items():
        (d / "eval" / mode).mkdir(parents=True)
        (d / "eval" / mode / "results.json").write_text(json.dumps(
            {"clean_acc": clean, "pgd20_acc": pgd, "aa_acc": aa, "n_examples": 200}))
    return d.name


def synthetic_sweep(root: Path) -> Path:
    sw = root / "demo-sweep"
    base = _run(sw / "full", "full", rcs=False, k=1.0, full_t=100.0,
                accs={"SLF": (0.52, 0.31, 0.27), "ALF": (0.55, 0.33, 0.29)})
    trials = [{"trial_name": name, "params": {"rcs.fraction": k}, "status": "finished",
               "run_dir": _run(sw / name, name, rcs=True, k=k, full_t=100.0,
                               accs={"SLF": (0.50 - d, 0.29 - d, 0.25 - d), "ALF": (0.53 - d, 0.31 - d, None)})}
              for name, k, d in (("k0.2-w2", 0.2, 0.02), ("k0.4-w2", 0.4, 0.01))]
    trials.append({"trial_name": "k0.1-w2", "params": {"rcs.fraction": 0.1}, "run_dir": "k0.1-w2",
                   "status": "stopped", "metrics": {"stopped_at_epoch": 2, "time_total_s": 120.0}})
    (sw / "sweep.json").write_text(json.dumps({
        "sweep_name": "demo-sweep", "grid": {"rcs.fraction": [0.1, 0.2, 0.4], "rcs.warmup_epochs": [2]},
        "baseline_run_dir": base, "trials": trials, "base_config": {"train": {"epochs": 6}}}))
    return sw


def synthetic_report(root: Path) -> ReportPaths:
    return render_report(collect(synthetic_sweep(root), prices=PRICES), root / "report",
                         prices=PRICES, gpu_type="H100")


# ----------------------------------------------------------------------------------------------
# The browser
# ----------------------------------------------------------------------------------------------


def open_report(html: Path, screenshot: Optional[Path] = None, width: int = 1280) -> dict:
    """Load ``html`` in headless Chromium; return what the page did and showed."""
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    assert exe, "no system Chromium"
    outside: list[str] = []  # requests that would leave the machine (aborted)
    requests: list[str] = []
    errors: list[str] = []

    def route(r):
        url = r.request.url
        if url.startswith("file:"):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.route("**/*", route)
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.goto(html.resolve().as_uri(), wait_until="load")
            page.wait_for_load_state("networkidle")
            h2 = page.locator("h2")
            out = {
                "title": page.title(),
                "h1": page.locator("h1").inner_text(),
                "h2": [h2.nth(i).inner_text() for i in range(h2.count())],
                "h2_visible": [h2.nth(i).is_visible() for i in range(h2.count())],
                "images": page.evaluate("""() => Array.from(document.images).map(i => ({
                    alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                    shown: i.getBoundingClientRect().width, data: i.src.startsWith('data:image/png;base64,')}))"""),
                "tables": page.locator("table").count(),
                "scripts": page.locator("script").count(),
                "links": page.locator("link, a[href], [srcset], iframe, object, embed").count(),
            }
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            out.update(outside=list(outside), requests=list(requests), errors=list(errors))
            # The guard itself: a page that does fetch from outside is caught (and aborted).
            page.set_content('<img src="http://192.0.2.1/x.png"><link rel="stylesheet" href="https://192.0.2.1/s.css">')
            page.wait_for_load_state("load")
            out["probe_outside"] = outside[len(out["outside"]):]
        finally:
            browser.close()
    return out


def _need_browser() -> None:
    pytest.importorskip("playwright.sync_api", reason="the browser extra is not installed "
                        "(pip install -e '.[browser]', or `make test`); report.html not opened in a browser")
    if find_chromium() is None:
        pytest.skip("no system Chromium (" + ", ".join(CHROMIUM_NAMES) + " not on PATH; apt-get install "
                    "chromium-headless-shell, or `make test` as root); report.html not opened in a browser")


@pytest.mark.timeout(300)
def test_report_renders_in_headless_chromium_offline(tmp_path: Path):
    _need_browser()
    paths = synthetic_report(tmp_path)
    md = paths.markdown.read_text()
    titles = re.findall(r"^## (.+)$", md, flags=re.M)
    assert set(SECTION_TITLES) <= set(titles) and "Robustness vs compute (Pareto front)" in titles
    n_images, n_tables = len(re.findall(r"^!\[", md, flags=re.M)), len(re.findall(r"^\|---", md, flags=re.M))
    assert n_images == len(paths.figures) == 4

    shot = tmp_path / "report.png"
    page = open_report(paths.html, shot)

    assert page["outside"] == [], f"report.html fetched from the network: {page['outside']}"
    assert all(u.startswith(("file:", "data:")) for u in page["requests"]), page["requests"]
    assert page["probe_outside"], "the request guard did not see a page that fetches from outside"
    assert page["errors"] == []
    assert page["title"] == page["h1"] == md.splitlines()[0].removeprefix("# ")
    assert page["h2"] == titles and all(page["h2_visible"]), list(zip(page["h2"], page["h2_visible"]))
    assert len(page["images"]) == n_images
    for img in page["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0 and img["shown"] > 0, img
        assert img["data"], f"{img['alt']}: not an embedded PNG"
    assert page["tables"] == n_tables
    assert page["scripts"] == 0 and page["links"] == 0
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def main(argv: list[str]) -> int:
    """Screenshot a report (default: the synthetic one) into argv[0], for docs/."""
    if not argv:
        print(__doc__.split("\n\n")[-1], file=sys.stderr)
        return 2
    out = Path(argv[0]).resolve()
    with tempfile.TemporaryDirectory(prefix="report-shot-") as tmp:
        html = Path(argv[1]) / "report.html" if len(argv) > 1 else synthetic_report(Path(tmp)).html
        page = open_report(html, out, width=1100)
    print(f"{out}: {out.stat().st_size / 1024:.0f} KiB; outside requests: {page['outside'] or 'none'}; "
          f"errors: {page['errors'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
