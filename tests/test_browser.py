"""The dashboard in a real browser: Voila serves a notebook showing the dashboard of a
real study, and JupyterLab runs a notebook with ``%load_ext slimtune`` and ``%slimtune
show``; Debian's headless Chromium (driven by playwright) checks the DOM.

Skipped, with the reason, where Chromium, playwright, Voila or JupyterLab is missing.
The screenshots go to ``$SLIMTUNE_SCREENSHOT_DIR`` (default: the test's tmp dir); their
paths are printed.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests._system import require_system

from tests._widget_study import isolated_env, real_study

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::UserWarning")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking"]
FINAL = ("COMPLETE", "PRUNED", "FAIL")
# the figure's marks, in FrontierPlot's order: front, selected, inspected, baseline, others, trials
MARKS = "document.querySelectorAll('.slimtune-plot svg.svg-figure > g > g:nth-child(2) > g')"
JS_POINTS = (f"() => {{ const m = {MARKS}; if (m.length < 6) return -1;"
             " return m[4].querySelectorAll('.dot').length + m[5].querySelectorAll('.dot').length; }")
JS_FRONT_PATH = f"() => {{ const p = {MARKS}[0].querySelector('path.line'); return p ? p.getAttribute('d') || '' : ''; }}"
JS_INSPECTED = f"() => {MARKS}[2].querySelectorAll('.dot').length"


def _requirements(modules: tuple[str, ...] = ("playwright", "voila")) -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"Debian chromium is not installed ({CHROMIUM} missing; apt-get install chromium)"
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            return f"the `{module}` Python package is not installed (pip install 'slimtune[dev]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(path: Path, name: str, storage: str) -> None:
    import nbformat

    code = (
        "import warnings\n"
        "warnings.filterwarnings('ignore')\n"
        "from slimtune.studies import Study\n"
        "from slimtune.widgets import StudyDashboard\n"
        f"study = Study.load({name!r}, storage={storage!r})\n"
        "dashboard = StudyDashboard(study, watch=True, interval=1.0, n_trials=3)\n"
        "dashboard"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@contextmanager
def voila(notebook: Path, env: dict[str, str], log: Path):
    """Voila on a free port of 127.0.0.1; the server and its kernels are always ended."""
    port = _free_port()
    voila_bin = Path(sys.executable).with_name("voila")
    command = [str(voila_bin) if voila_bin.exists() else "voila", notebook.name, "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=notebook.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"voila exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"voila did not listen on port {port}:\n{log.read_text()[-3000:]}")
            yield f"http://127.0.0.1:{port}/"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


def test_dashboard_in_chromium(tmp_path_factory, tmp_path, capsys):
    reason = _requirements()
    if reason:
        require_system(reason)
    from playwright.sync_api import sync_playwright

    info = real_study(tmp_path_factory)
    study = info.load()
    n_before = len(study.trials(states=FINAL))
    study.close()
    assert n_before >= 10

    _notebook(tmp_path / "dashboard.ipynb", info.name, info.storage)
    env = isolated_env(tmp_path / "jupyter")
    shots = Path(os.environ.get("SLIMTUNE_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    screenshot = shots / "slimtune-dashboard.png"
    timings: dict[str, float] = {}
    started = time.monotonic()

    with voila(tmp_path / "dashboard.ipynb", env, tmp_path / "voila.log") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1150})
            page.goto(url, timeout=90_000)
            page.wait_for_function(f"() => ({JS_POINTS})() >= {n_before}", timeout=90_000)
            timings["rendered"] = time.monotonic() - started

            # every trial a point, the front a step line, the name shown as text
            assert page.evaluate(JS_POINTS) == n_before
            assert page.evaluate(JS_FRONT_PATH).count("L") + page.evaluate(JS_FRONT_PATH).count("H") >= 1
            header = page.locator(".slimtune-header")
            assert info.name in header.inner_text()
            assert header.locator("i").count() == 0  # the <i> in the name was escaped

            # hover: the tooltip comes from Python; click: a round trip fills the details
            dot = page.locator(f"{_css_mark(5)} .dot").first
            dot.hover(force=True)
            page.wait_for_function("() => [...document.querySelectorAll('.slimtune-tip')]"
                                   ".some(e => e.innerText.includes('trial'))", timeout=20_000)
            assert page.locator(".slimtune-details[data-trial]").count() == 0
            dot.click(force=True)
            page.wait_for_selector(".slimtune-details[data-trial]", timeout=20_000)
            details = page.locator(".slimtune-details").inner_text()
            assert "vs baseline" in details and "Distillation" in details
            assert page.evaluate(JS_INSPECTED) == 1
            timings["clicked"] = time.monotonic() - started

            # Start runs the search in the kernel's background; the watcher (1 s) shows the
            # running trial; Stop then ends the search after that trial, which is added live
            page.get_by_role("button", name="Start").click()
            page.wait_for_function("() => document.querySelector('.slimtune-header').innerText.includes('1 running')",
                                   timeout=120_000, polling=250)
            timings["trial running"] = time.monotonic() - started
            assert page.evaluate(JS_POINTS) == n_before
            page.get_by_role("button", name="Stop").click()
            page.wait_for_function(f"() => ({JS_POINTS})() > {n_before}", timeout=150_000, polling=250)
            timings["live point"] = time.monotonic() - started
            page.wait_for_function("() => document.querySelector('.slimtune-progress-label').innerText"
                                   ".includes('stopped')", timeout=60_000, polling=250)
            progress = page.locator(".slimtune-progress-label").inner_text()
            assert "1 / 3 trials" in progress, progress
            n_shown = page.evaluate(JS_POINTS)
            assert n_shown == n_before + 1  # Stop ended the search after the running trial
            page.wait_for_timeout(2500)
            assert page.evaluate(JS_POINTS) == n_shown  # and nothing more came
            assert "running" not in page.locator(".slimtune-header").inner_text()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    with socket.socket() as s:  # the server is gone
        assert s.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/")))) != 0
    study = info.load()
    stored = len(study.trials(states=FINAL))
    study.close()
    assert stored == n_shown  # Stop lost nothing: every finished trial is stored and shown
    with capsys.disabled():
        print(f"\nscreenshot: {screenshot}\nbrowser timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    assert time.monotonic() - started < 240


@contextmanager
def jupyter_lab(root: Path, env: dict[str, str], log: Path):
    """JupyterLab on a free port of 127.0.0.1 with a token, serving ``root``; nothing is
    fetched from outside (no news, no update check, no extension index); the server and
    its kernels are always ended."""
    import secrets

    port, token = _free_port(), secrets.token_hex(16)
    lab_bin = Path(sys.executable).with_name("jupyter-lab")
    command = [str(lab_bin) if lab_bin.exists() else "jupyter-lab", "--no-browser", "--allow-root",
               "--expose-app-in-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"jupyter lab did not listen on port {port}:\n{log.read_text()[-3000:]}")
            yield port, token
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


JS_KERNEL_IDLE = ("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                  " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
                  " return !!k && k.connectionStatus === 'connected' && k.status === 'idle'; }")


def _lab_notebook(path: Path, name: str, storage: str) -> None:
    import nbformat

    cells = ["%load_ext slimtune", f"%slimtune show {shlex.quote(name)} --storage {storage}"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_magic_dashboard_in_jupyterlab(tmp_path_factory, tmp_path, capsys):
    """Most users work in JupyterLab: the ipywidgets and bqplot front-end extensions of the
    installed versions must load there and show the magic's dashboard."""
    reason = _requirements(("playwright", "jupyterlab", "nbformat"))
    if reason:
        require_system(reason)
    from playwright.sync_api import sync_playwright

    info = real_study(tmp_path_factory)
    study = info.load()
    n_trials = len(study.trials(states=FINAL))
    study.close()
    root = tmp_path / "lab"
    root.mkdir()
    _lab_notebook(root / "dashboard.ipynb", info.name, info.storage)
    env = isolated_env(tmp_path / "jupyter")
    settings = Path(env["JUPYTER_CONFIG_DIR"]) / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news prompt
    shots = Path(os.environ.get("SLIMTUNE_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    screenshot = shots / "slimtune-jupyterlab.png"
    timings: dict[str, float] = {}
    started = time.monotonic()

    with jupyter_lab(root, env, tmp_path / "lab.log") as (port, token), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/dashboard.ipynb?token={token}", timeout=120_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            page.wait_for_function(JS_KERNEL_IDLE, timeout=120_000, polling=250)
            timings["kernel idle"] = time.monotonic() - started
            page.locator(".jp-Notebook .jp-Cell").first.click()
            page.keyboard.press("Shift+Enter")  # run the cells from the page, as a user does
            page.keyboard.press("Shift+Enter")
            page.wait_for_function(f"() => ({JS_POINTS})() >= {n_trials}", timeout=180_000, polling=500)
            timings["rendered"] = time.monotonic() - started

            # one mark per trial, the front as a step line, click -> details from Python
            assert page.evaluate(JS_POINTS) == n_trials
            path = page.evaluate(JS_FRONT_PATH)
            assert path.count("L") + path.count("H") >= 1
            assert info.name in page.locator(".slimtune-header").inner_text()
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            assert errors.count() == 0, errors.all_inner_texts()  # no Optuna log, no traceback
            assert "Error displaying widget" not in page.locator(".jp-Notebook").inner_text()
            dot = page.locator(f"{_css_mark(5)} .dot").first
            dot.click(force=True)
            page.wait_for_selector(".slimtune-details[data-trial]", timeout=30_000)
            details = page.locator(".slimtune-details").inner_text()
            assert "vs baseline" in details and "Distillation" in details
            assert page.evaluate(JS_INSPECTED) == 1
            timings["clicked"] = time.monotonic() - started
            page.mouse.move(5, 5)  # no tooltip over the details in the picture
            page.wait_for_timeout(500)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    with capsys.disabled():
        print(f"\nscreenshot: {screenshot}\njupyterlab timings (s): "
              f"{json.dumps({k: round(v, 1) for k, v in timings.items()})}")


def _css_mark(index: int) -> str:
    return f".slimtune-plot svg.svg-figure > g > g:nth-child(2) > g:nth-child({index + 1})"


def test_skip_reason_names_what_is_missing(monkeypatch):
    """Without chromium the browser test skips with a reason, never passes silently."""
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == CHROMIUM else os.path.isfile(p))
    assert "chromium" in (_requirements() or "")
