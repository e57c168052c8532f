"""Screenshots of the MLflow UI as `study ui` serves it, in headless Chromium, the way a new
user reaches each page: from the printed URL, by clicking. Not a test and not a CI
dependency: a look at what a user sees.

    python tools/ui_screenshots.py --out ui-screenshots [--port 5095] [-- --profile smoke]

Run it in a checkout whose store holds a study (after `study run`); the arguments after
`--` go to `study ui`. Needs Debian's Chromium (`apt-get install chromium`) and the
playwright package (`pip install playwright`; it drives the system Chromium, so no
`playwright install`). Each page is taken at 1,366 x 900 in a fresh browser profile:

    01-runs.png            the URL `study ui` prints: the study's runs, best tune_f1 first
    02-trial.png           the best trial, reached by clicking its name
    03-trial-metrics.png   its Model metrics tab
    04-charts.png          back to Runs from the side bar, its chart view (MLflow 3's
                           comparison of runs)
    05-compare.png         three trials selected, "Compare"
    06-registry.png        Model registry, from the side bar
    07-model.png           the registered model
    08-model-version.png   its newest version

and pages.json: each page's address, the view the browser is in (MLflow's
`mlflow.workflowType` setting) and whether a GenAI-only label shows.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1366, "height": 900}
URL = re.compile(r"(http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\?\S+)")
GENAI_LABELS = ("Evaluation runs", "Training runs", "Agent versions")  # GenAI pages only
SETTLE_MS = 4000  # the UI fetches after its first paint


def start_ui(port: int, study_args: list[str], wait_s: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "study", "ui", "--port", str(port),
                             *study_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    found: list[str] = []

    def read():
        for line in proc.stdout:
            print("study ui | " + line, end="", flush=True)
            if not found and (m := URL.search(line)):
                found.append(m[1])
    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + wait_s
    while not found:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"study ui printed no URL (exit {proc.poll()})")
        time.sleep(0.2)
    return proc, found[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, study_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) \
        if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="ui-screenshots", help="folder for the PNGs and pages.json")
    p.add_argument("--port", type=int, default=5095)
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--wait", type=float, default=180, help="seconds for `study ui` to answer")
    args = p.parse_args(ours)
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    proc, url = start_ui(args.port, study_args, args.wait)
    pages: list[dict] = []
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS,
                viewport=VIEWPORT)
            page = browser.new_page()

            def shot(name: str, settle_ms: int = SETTLE_MS) -> None:
                page.wait_for_timeout(settle_ms)
                page.screenshot(path=str(out / f"{name}.png"))
                text = page.inner_text("body")
                view = page.evaluate("localStorage.getItem('mlflow.workflowType_v1')")
                pages.append({"page": name, "url": page.url, "view": json.loads(view or "null"),
                              "genai_labels": [w for w in GENAI_LABELS if w in text]})
                print(f"{name}: {page.url} (view {pages[-1]['view']})", flush=True)

            page.goto(url)
            trial_links = page.get_by_role("link", name=re.compile(r"^trial-\d+"))
            trial_links.first.wait_for(timeout=120_000)
            shot("01-runs")
            best = trial_links.first.inner_text()
            trial_links.first.click()
            page.get_by_role("tab", name="Model metrics").wait_for(timeout=60_000)
            shot("02-trial")
            page.get_by_role("tab", name="Model metrics").click()
            shot("03-trial-metrics")
            print(f"(the trial clicked: {best})")

            # Back to the runs page as a user goes: the side bar (no share key in its link).
            page.get_by_role("link", name="Runs", exact=True).first.click()
            trial_links.first.wait_for(timeout=60_000)
            view_mode = "input[name='runs-view-mode'][value='{}']"  # table, chart, ...
            page.locator(view_mode.format("CHART")).dispatch_event("click")
            shot("04-charts", 8000)
            page.locator(view_mode.format("TABLE")).dispatch_event("click")
            trial_links.first.wait_for(timeout=60_000)
            boxes = page.get_by_role("checkbox")
            picked = 0
            for i in range(boxes.count()):
                row = boxes.nth(i).locator("xpath=ancestor::*[@role='row'][1]")
                if row.count() and re.search(r"\btrial-\d+", row.inner_text()) and picked < 3:
                    boxes.nth(i).check()
                    picked += 1
            page.get_by_role("button", name="Compare").click()
            shot("05-compare", 8000)

            page.get_by_role("link", name="Model registry").click()
            shot("06-registry")
            page.get_by_role("link", name=re.compile(r"^kd-qa-student-")).first.click()
            shot("07-model")
            page.get_by_role("link", name=re.compile(r"^Version \d+")).first.click()
            shot("08-model-version")
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: study ui takes its server down
        proc.wait(timeout=60)
        (out / "pages.json").write_text(json.dumps({"url": url, "pages": pages}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
