"""The explorer's cost: page size and time to interactive in headless Chromium.

    python benchmarks/view_cost.py runs/induction        # after `interp run induction-heads --preset quick`

Measures, for the run or analysis directory given:

- write: `interp.view.write_view(DIR)` wall time, first with the pattern cache as found
  (the first view of a run computes one forward per checkpoint and caches it), then again
  with every pattern cached (what regenerating a page costs);
- size: `DIR/view/index.html` in MB (target <= 5 MB for the induction quick run);
- time to interactive: in a fresh headless Chromium per round (a cold browser profile, so
  no compiled-script cache), the time from navigation start until the page has drawn its
  first view and handles the slider (`window.interpView.readyAt`, `performance.now()` at
  that moment), target <= 1.5 s on a quiet machine (median over rounds); `scriptAt` is when the page's own
  script started, i.e. the cost of parsing plotly.js and the data before it; and the CPU
  time of the renderer's main thread until then (DevTools `ThreadTime`): what the page
  costs on an idle core, which other work on a shared machine does not inflate.

Chromium runs on this machine's cores (the target is 2 cores); the 1-minute load average is
recorded with each round, since other work on a shared machine slows the browser too.
Writes `benchmarks/results/view_cost.json` (`--out` for another file); `--check` exits 1
when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median, spread, table, write_result  # noqa: E402

from interp.view import write_view  # noqa: E402

MAX_MB = 5.0
MAX_SECONDS = 1.5


def chromium(height: int = 1000):
    """Headless Chromium through Selenium and the system's chromedriver (nothing downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size=1400,{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)


def wait_ready(driver, limit: float = 60) -> None:
    deadline = time.perf_counter() + limit
    while not driver.execute_script("return !!(window.interpView && window.interpView.ready)"):
        if time.perf_counter() > deadline:
            raise RuntimeError("the page never became ready")
        time.sleep(0.01)


def screenshot(page: Path, out: Path) -> None:
    """The headline in compare mode: step A at the checkpoint before the first phase mark of the
    headline's run, step B at its last checkpoint."""
    driver = chromium(height=2000)
    try:
        driver.get(page.resolve().as_uri())
        wait_ready(driver)
        driver.execute_script("""
            const api = window.interpView, run = api.data.runs.find((r) => r.name === api.state.run);
            const mark = run.marks.length ? run.marks[0].step : run.steps[run.steps.length - 1];
            const before = Math.max(0, run.steps.filter((s) => s < mark).length - 1);
            document.getElementById('compare').click();
            api.setStep('a', before);
            api.setStep('b', run.steps.length - 1);""")
        time.sleep(1.5)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def browser_round(page: Path) -> dict[str, float]:
    driver = chromium()
    try:
        load = os.getloadavg()[0]
        driver.execute_cdp_cmd("Performance.enable", {})
        driver.get(page.resolve().as_uri())
        wait_ready(driver)
        script_at, ready_at = driver.execute_script("return [window.interpView.scriptAt, window.interpView.readyAt]")
        metrics = {m["name"]: m["value"] for m in driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]}
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        if errors:
            raise RuntimeError(f"browser console errors: {errors}")
        return {"ready_s": ready_at / 1000, "script_s": script_at / 1000, "cpu_s": metrics.get("ThreadTime", 0.0),
                "renderer_cpu_s": metrics.get("ProcessTime", 0.0),
                "load_average": load}
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a run or analysis directory (e.g. the induction quick run's output)")
    parser.add_argument("--rounds", type=int, default=5, help="browser rounds, each a fresh Chromium (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the pattern forwards (default 1)")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/view_cost.json)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless <= {MAX_MB} MB and <= {MAX_SECONDS} s")
    parser.add_argument("--screenshot", default=None, help="also save a PNG of the headline in compare mode here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    directory = Path(args.dir)

    started = time.perf_counter()
    page = write_view(directory, device="cpu")
    first_write = time.perf_counter() - started
    started = time.perf_counter()
    page = write_view(directory, device="cpu")
    cached_write = time.perf_counter() - started
    size_mb = page.stat().st_size / 1e6

    rounds = [browser_round(page) for _ in range(args.rounds)]
    ready = [r["ready_s"] for r in rounds]
    script = [r["script_s"] for r in rounds]
    cpu = [r["cpu_s"] for r in rounds]
    print(f"page: {page}")
    print(table(["measure", "median", "range", "target"], [
        ["page size (MB)", f"{size_mb:.2f}", "", f"<= {MAX_MB:g}"],
        ["time to interactive (s)", f"{median(ready):.2f}", spread(ready), f"<= {MAX_SECONDS:g}"],
        ["  of which plotly.js + data parsed (s)", f"{median(script):.2f}", spread(script), ""],
        ["  CPU time of the page's main thread (s)", f"{median(cpu):.2f}", spread(cpu), ""],
        ["write_view, patterns as found (s)", f"{first_write:.2f}", "", ""],
        ["write_view, patterns cached (s)", f"{cached_write:.2f}", "", ""],
    ]))
    loads = [r["load_average"] for r in rounds]
    print(f"cores: {os.cpu_count()}; 1-minute load average during the rounds: {spread(loads)}")
    met = size_mb <= MAX_MB and median(ready) <= MAX_SECONDS
    result = {"dir": str(directory), "page": str(page), "size_mb": round(size_mb, 3), "rounds": rounds,
              "ready_s_median": round(median(ready), 3), "script_s_median": round(median(script), 3),
              "cpu_s_median": round(median(cpu), 3),
              "write_s_first": round(first_write, 2), "write_s_cached": round(cached_write, 2),
              "targets": {"size_mb": MAX_MB, "ready_s": MAX_SECONDS}, "met": met,
              "environment": environment(torch.device("cpu"))}
    print(f"wrote {write_result('view_cost', result, args.out)}")
    if args.screenshot:
        screenshot(page, Path(args.screenshot))
        print(f"wrote {args.screenshot}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
