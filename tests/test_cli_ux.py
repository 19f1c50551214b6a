"""A new user's first hour with the CLI (issue 12): tables that fit 100 columns and show
every active parameter, flags and speed-ups; the next commands after ``run``; the
``--set`` message; a light start; the baseline cache; export formats and metadata."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from slimtune.cli import main
from slimtune._cli_tables import WIDTH, compact_params, table_lines

ROOT = Path(__file__).resolve().parents[1]
TASK = "tests.user_task:make_task"  # 96 tiny images: seconds per trial
FAST = ["--epochs", "1", "--latency-repeats", "3"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "slimtune.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 3-trial study made by `slimtune run` (2-bit weights held, so every trial is flagged)."""
    path = tmp_path_factory.mktemp("ux") / "ux.db"
    url = f"sqlite:///{path}"
    result = invoke("run", "--study", "ux", "--task", TASK, "--trials", "3", "--seed", "0", "--no-early-stopping",
                    "--fix", "quant.bits=2", *FAST, "--storage", url)
    assert result.exit_code == 0, result.output
    return url, result


# -- tables ------------------------------------------------------------------------------
def test_compact_params_show_every_active_parameter_and_hide_inactive_ones():
    names = ["prune.ratio", "prune.granularity", "prune.rewind", "quant.bits", "quant.mode", "distill.temperature",
             "distill.alpha", "dsconv.blocks.0.0", "dsconv.blocks.1.0", "dsconv.blocks.2.0",
             "exits.0.enabled", "exits.0.threshold", "exits.1.enabled", "exits.1.threshold"]
    values = {"prune.ratio": 0.28, "prune.granularity": "weight", "prune.rewind": False, "quant.bits": 8,
              "quant.mode": "ptq", "distill.temperature": 4.0, "distill.alpha": 0.7, "dsconv.blocks.0.0": False,
              "dsconv.blocks.1.0": True, "dsconv.blocks.2.0": True, "exits.0.enabled": False,
              "exits.0.threshold": 0.6, "exits.1.enabled": True, "exits.1.threshold": 0.9}
    assert compact_params(values, names) == "p0.28w q8ptq T4.0 a0.70 ds{1,2} ex{1@0.90}"
    # defaults are shown too (32 bits, channel granularity); inactive ones are not
    defaults = {**values, "prune.ratio": 0.5, "prune.granularity": "channel", "prune.rewind": True, "quant.bits": 32,
                "quant.mode": "qat", "dsconv.blocks.1.0": False, "dsconv.blocks.2.0": False, "exits.1.enabled": False}
    assert compact_params(defaults, names) == "p0.50cr q32 T4.0 a0.70"
    assert compact_params({**defaults, "prune.ratio": 0.0}, names) == "q32 T4.0 a0.70"
    assert compact_params({"quant.bits": 4, "quant.mode": "qat", "mine.knob": 0.12345}) == "q4qat mine.knob=0.123"


def test_table_fits_100_columns_with_flag_markers_listed_below():
    flag = "2-bit weights are stored packed at 2 bits but execute on int8 kernels with 8-bit activations"
    names = [f"dsconv.features.{i}.conv" for i in range(6)] + [f"exits.{i}.enabled" for i in range(4)]
    params = {"prune.ratio": 0.5, "prune.granularity": "channel", "quant.bits": 2, "quant.mode": "qat",
              "distill.temperature": 12.5, "distill.alpha": 0.25, **{n: True for n in names},
              **{f"exits.{i}.threshold": 0.75 for i in range(4)}}
    rows = [{"trial": 12, "state": "COMPLETE", "pareto": True, "val_accuracy": 0.91, "test_accuracy": 0.9,
             "latency_ms": 0.05, "reference_latency_ms": 0.2, "size_bytes": 4096, "artifact_bytes": 10240,
             "macs": 2_500_000,
             "params": params, "flags": [flag]},
            {"trial": 13, "state": "PRUNED", "params": params, "stopped_reason": "cannot reach the front " * 8}]
    lines = table_lines(rows, names)
    assert max(map(len, lines)) <= WIDTH, max(lines, key=len)
    first = lines[1]
    assert first.split()[:9] == ["12*", "complete", "0.9100", "0.9000", "0.0500", "4.00x", "4.0", "10.0", "2.50M"]
    assert first.split()[9] == "a" and "a = 2-bit weights" in "\n".join(lines)
    assert "stopped" in lines[lines.index(next(ln for ln in lines if "13" in ln.split()[:1]))]
    wide = table_lines(rows, names, wide=True)
    assert max(map(len, wide)) > WIDTH and "ex{0@0.75,1@0.75,2@0.75,3@0.75}" in wide[1]


def test_show_table_has_val_test_speedup_flags_and_fits(made):
    url, _ = made
    rows = json.loads(invoke("show", "ux", "--json", "--storage", url).stdout)["trials"]
    out = invoke("show", "ux", "--storage", url)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert max(map(len, lines)) <= WIDTH
    header = next(ln for ln in lines if ln.lstrip().startswith("trial"))
    assert header.split()[:10] == ["trial", "state", "val_acc", "test_acc", "lat_ms", "speedup", "pack_KiB", "art_KiB",
                                   "MACs", "flags"]
    for r in rows:
        line = next(ln for ln in lines if ln.split() and ln.split()[0].rstrip("*") == str(r["trial"]))
        ratio = r["reference_latency_ms"] / r["latency_ms"]
        assert f"{ratio:.2f}x" in line  # the trial's own baseline timing, not the study's stored one
        assert "q2" in line and f"T{r['params']['distill.temperature']:.1f}" in line
        assert f"{r['size_bytes'] / 1024:.1f}" in line
        assert r["flags"], r
    assert "flags:" in lines and any("execute on int8 kernels" in ln for ln in lines)


def test_run_ends_with_the_next_commands_and_they_work(made, tmp_path):
    url, result = made
    tail = result.output.split("Next:\n", 1)[1].splitlines()
    commands = [shlex.split(line) for line in tail if line.startswith("  slimtune ")]
    assert [c[1] for c in commands] == ["show", "select", "export"]
    for command in commands:
        assert command[2] == "ux" and command[-2:] == ["--storage", url]
        args = [("%s" % (tmp_path / a) if a.endswith(".onnx") else a) for a in command[1:]]
        done = invoke(*args)
        assert done.exit_code == 0, (command, done.output)
    assert (tmp_path / "ux.onnx").stat().st_size > 1000


def test_resumed_run_names_the_cached_baseline_and_shows_the_study_wide_front(made, tmp_path):
    url, _ = made
    result = run_cli("run", "--study", "ux", "--task", TASK, "--trials", "1", "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cache = Path(os.environ["SLIMTUNE_CACHE_DIR"]) / "baselines"
    assert re.search(rf"^Baseline of user-mlp-conv \(seed 0\): from the cache {re.escape(str(cache))}/user-mlp-conv-"
                     r"[0-9a-f]{16}-seed0\.pt$", result.stdout, flags=re.M), result.stdout
    rows = json.loads(invoke("show", "ux", "--json", "--storage", url).stdout)["trials"]
    best = max(r.get("val_accuracy", r["accuracy"]) for r in rows if r["state"] == "COMPLETE")
    front = json.loads(invoke("show", "ux", "--pareto", "--json", "--storage", url).stdout)["trials"]
    bar = result.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert f"best_val={best:.4f}" in bar, bar  # over all 4 trials, not only the new one
    assert f"front={len(front)}" in bar, bar


def test_notebook_study_list_uses_the_cli_words():
    from slimtune.widgets._magics import StudyList

    listed = StudyList([{"name": "s", "task": "digits", "objectives": ["accuracy", "latency_ms"], "trials": 3,
                         "complete": 2, "pruned": 1, "failed": 0, "created_at": "2026-11-30T20:41:39.123"}], "sqlite://")
    for text in (repr(listed), listed._repr_html_()):
        assert "stopped" in text and "created" in text and "2026-11-30 20:41" in text
        assert "pruned" not in text and "created_at" not in text and "20:41:39" not in text


def test_cli_study_list_uses_the_same_words(made):
    url, _ = made
    out = invoke("studies", "--storage", url)
    header = out.output.splitlines()[0].split()
    assert header == ["study", "task", "objectives", "trials", "complete", "stopped", "failed", "created"]


def test_optuna_info_logs_only_with_verbose(made):
    import optuna

    url, _ = made
    assert invoke("--verbose", "studies", "--storage", url).exit_code == 0
    assert optuna.logging.get_verbosity() == optuna.logging.INFO
    assert invoke("studies", "--storage", url).exit_code == 0
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "fixed"), [
    (["eval", "--task", "digits", "--set", "prune.ratio", "0.5"], "--set prune.ratio=0.5"),
    (["run", "--study", "s", "--trials", "1", "--fix", "quant.bits", "8"], "--fix quant.bits=8"),
])
def test_assignment_without_equals_names_the_form(args, fixed, tmp_path):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "NAME=VALUE" in lines[0] and fixed in lines[0], proc.stderr
    assert "unexpected extra argument" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_export_format_follows_the_extension_and_refuses_a_mismatch(made, tmp_path):
    import onnx
    import torch

    url, _ = made
    out = invoke("export", "ux", "--trial", "1", "--out", str(tmp_path / "best.pt"), "--task", TASK, "--storage", url)
    assert out.exit_code == 0, out.output
    assert torch.jit.load(str(tmp_path / "best.pt"))(torch.zeros(1, 1, 8, 8)).shape == (1, 2)  # TorchScript, not ONNX
    bad = invoke("export", "ux", "--trial", "1", "--out", str(tmp_path / "best.onnx"), "--format", "torchscript",
                 "--storage", url)
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "'--format' is 'torchscript'" in bad.stderr.replace("`", "'") and ".onnx" in bad.stderr
    assert not (tmp_path / "best.onnx").exists()
    ok = invoke("export", "ux", "--trial", "1", "--out", str(tmp_path / "best.onnx"), "--storage", url)
    assert ok.exit_code == 0 and onnx.load(str(tmp_path / "best.onnx")).graph.node


def test_onnx_metadata_says_how_to_feed_the_model(made, tmp_path):
    import numpy as np
    import onnxruntime as ort

    import slimtune
    from slimtune.studies import Study

    url, _ = made
    path = tmp_path / "m.onnx"
    assert invoke("export", "ux", "--trial", "2", "--out", str(path), "--storage", url).exit_code == 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["input_name"] == session.get_inputs()[0].name
    assert json.loads(meta["input_shape"])[1:] == [1, 8, 8] and meta["input_dtype"] == "float32"
    assert json.loads(meta["num_classes"]) == 2 and meta["study"] == "ux" and json.loads(meta["trial"]) == 2
    assert meta["slimtune_version"] == slimtune.__version__ and "not stated by the task" in meta["preprocessing"]
    with Study.load("ux", storage=url) as study:
        cand = study.candidate(2)
        assert json.loads(meta["params"]) == cand.params
        data, _ = cand.artifact()
    x = np.zeros((3, 1, 8, 8), np.float32)  # the metadata's input feeds it, batch free
    timed = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {meta["input_name"]: x})[0], timed.run(None, {meta["input_name"]: x})[0])
    chosen = json.loads(invoke("select", "ux", "--max-latency-ms", "1000", "--json", "--storage", url).stdout)
    assert {"input_name", "input_shape", "input_dtype", "preprocessing", "num_classes", "study", "trial", "params",
            "slimtune_version"} <= set(chosen["metadata"])
    assert chosen["metadata"]["trial"] == chosen["trial"] and chosen["metadata"]["params"] == chosen["params"]


def test_builtin_preprocessing_is_what_the_task_does():
    from sklearn.datasets import load_digits

    from slimtune.tasks import get_task
    from slimtune.tasks._builtin import _split

    task = get_task("digits")
    assert "pixels / 16" in task.preprocessing and "(x - 0.3) / 0.4" in task.preprocessing
    raw = load_digits().images
    train, _, _ = _split(len(raw), (0.6, 0.2), seed=0)
    import torch

    x = (torch.tensor(raw[train], dtype=torch.float32).unsqueeze(1) / 16 - 0.3) / 0.4
    assert torch.allclose(x, task.data.x_train)


# -- start-up, cache, eval -----------------------------------------------------------------
def test_cli_import_help_studies_and_show_import_no_torch(made):
    url, _ = made
    code = ("import sys; from slimtune.cli import main\n"
            "for args in (['--help'], ['studies', '--storage', URL], ['show', 'ux', '--storage', URL]):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, (args, e.code)\n"
            "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'sklearn', 'torch_pruning') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n").replace("URL", repr(url))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]


def test_cache_list_and_clear(tmp_path):
    env = {"SLIMTUNE_CACHE_DIR": str(tmp_path / "cache")}
    folder = tmp_path / "cache" / "baselines"
    folder.mkdir(parents=True)
    (folder / "digits-0123456789abcdef-seed0.pt").write_bytes(b"x" * 2048)
    (folder / "fashion-mnist-fedcba9876543210-seed1.pt").write_bytes(b"x" * 1024)
    listed = run_cli("cache", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0 and str(folder) in listed.stdout and "2 files" in listed.stdout
    assert re.search(r"digits\s+seed 0\s+2\.0 KiB", listed.stdout), listed.stdout
    cleared = run_cli("cache", "clear", "--task", "digits", cwd=tmp_path, env=env)
    assert cleared.returncode == 0 and "Removed 1 cached baseline " in cleared.stdout
    assert [p.name for p in folder.iterdir()] == ["fashion-mnist-fedcba9876543210-seed1.pt"]
    run_cli("cache", "clear", cwd=tmp_path, env=env)
    assert list(folder.iterdir()) == []


def test_eval_prints_its_settings_phases_and_where_the_baseline_came_from(tmp_path):
    env = {"SLIMTUNE_CACHE_DIR": str(tmp_path / "cache")}
    args = ["eval", "--task", TASK, "--set", "prune.ratio=0.5", "--set", "quant.bits=8", "--epochs", "1"]
    first = run_cli(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "prune.ratio=0.5" in out and "quant.bits=8" in out and "onnxruntime, 1 thread(s), batch 1" in out
    phases = [ln.split("]")[0] + "]" for ln in out.splitlines() if ln.startswith("[")]
    assert phases == ["[baseline]", "[train]", "[compress]", "[measure]"], out
    cached = next(iter((tmp_path / "cache" / "baselines").glob("user-mlp-conv-*-seed0.pt")))
    assert f"trained in" in out and f"saved to the cache {cached}" in out
    again = run_cli(*args, cwd=tmp_path, env=env)
    assert again.returncode == 0 and f"from the cache {cached}" in again.stdout
    assert "speedup" in again.stdout and "val_acc" in again.stdout


# -- what the README and the repository promise -------------------------------------------------
def _readme_commands(*, docs: bool = False) -> list[str]:
    """The `slimtune` command lines of README.md's bash blocks (and docs/*.md's with ``docs``)."""
    pages = [ROOT / "README.md", *(sorted((ROOT / "docs").glob("*.md")) if docs else [])]
    blocks = [b for page in pages for b in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)]
    lines = [ln.split("  #", 1)[0].strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if ln.startswith("slimtune ")]


def test_every_readme_command_parses_with_its_options():
    """Every documented command line parses (tests/test_docs.py runs them; this is the fast check)."""
    import click

    commands = _readme_commands(docs=True)
    assert len(commands) >= 10
    for line in commands:
        line = re.sub(r"\s[12]?>.*$", "", line)  # a shell redirection is not an argument
        words = shlex.split(re.sub(r"\[[^\]]*\]", "", line))[1:]
        cmd, rest = main, words
        while isinstance(cmd, click.Group):
            name, rest = rest[0], rest[1:]
            cmd = cmd.get_command(click.Context(cmd), name)
            assert cmd is not None, (line, name)
        cmd.make_context(name, rest)  # raises on an unknown option, e.g. `eval --storage`


def test_readme_setup_activates_the_venv_before_any_bare_command():
    text = (ROOT / "README.md").read_text()
    activate = text.index("source .venv/bin/activate")
    first_bare = min(text.index(f"\n{c}") for c in _readme_commands())
    assert activate < first_bare


def test_user_files_are_ignored_by_git(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = ["best.onnx", "model.onnx", "demo.onnx", "best.pt", "model.slim", "examples/quickstart.onnx",
             "examples/quickstart.nbconvert.ipynb", "slimtune.db", "examples/slimtune.db", "examples/.ipynb_checkpoints/x"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=ROOT, capture_output=True, text=True)
    assert sorted(proc.stdout.split()) == sorted(names), proc.stdout


def test_license_is_an_spdx_string():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"  # a table is deprecated and warns at install
    assert "setuptools>=77" in meta["build-system"]["requires"]
    assert "jupyterlab>=4" in meta["project"]["optional-dependencies"]["notebook"]
    assert "jupyterlab>=4" in meta["project"]["optional-dependencies"]["dev"]


def test_low_rank_groups_have_a_compact_code_and_a_legend():
    from slimtune._cli_tables import dsconv_legend

    names = ["dsconv.blocks.0.0", "lowrank.blocks.0", "lowrank.blocks.1", "lowrank.head.2"]
    params = {"quant.bits": 32, "lowrank.blocks.0": 0.05, "lowrank.blocks.1": 1.0, "lowrank.head.2": 0.423}
    assert compact_params(params, names) == "q32 lr{0:0.05,2:0.42}"  # 1.0 = not factorized: left out
    assert dsconv_legend(names) == "ds{i}: 0 = blocks.0.0; lr{i}: 0 = blocks.0, 1 = blocks.1, 2 = head.2"
