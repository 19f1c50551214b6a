"""docs/write_a_knob.md, followed as written: its knob file saved into a copy of the
package, its registration line added, its commands run (the space offers the knob, a
candidate uses it, the contract tests pass with it registered)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "write_a_knob.md"


def _try_it() -> tuple[str, str, str, list[str]]:
    """The "Try it" section's knob file path and code, registration line, and commands."""
    text = PAGE.read_text(encoding="utf-8")
    section = text[text.index("## Try it"):]
    path = re.search(r"Save this as\s+`([^`]+\.py)`", section).group(1)
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    commands = [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
                for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return path, python[0], python[1].strip(), commands


def test_the_page_names_a_file_a_line_and_commands():
    path, code, line, commands = _try_it()
    assert path.startswith("slimtune/spaces/") and "@register_knob" in code
    assert line.startswith("from slimtune.spaces import") and len(commands) >= 3


@pytest.mark.slow
def test_following_write_a_knob_adds_a_family_that_runs_and_breaks_no_test(tmp_path):
    path, code, line, commands = _try_it()
    for folder in ("slimtune", "tests", "docs"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")  # test_public_api reads the README's code too
    (tmp_path / path).write_text(code, encoding="utf-8")
    init = tmp_path / "slimtune" / "spaces" / "__init__.py"
    lines = init.read_text(encoding="utf-8").splitlines()
    last = max(i for i, text in enumerate(lines) if re.match(r"from slimtune\.spaces import \w+ as _\w+", text))
    init.write_text("\n".join([*lines[:last + 1], line, *lines[last + 1:]]) + "\n", encoding="utf-8")

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    outputs = []
    for command in commands:
        words = shlex.split(command)
        if words[0] == "slimtune":
            words = [sys.executable, "-m", "slimtune.cli", *words[1:]]
        elif words[0] == "python":
            words = [sys.executable, *words[1:]]
        proc = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    space, evaluated = outputs[0], outputs[1]
    assert "nm.keep" in space and str(tmp_path) not in space
    assert "n2:4" in evaluated and "q8ptq" in evaluated
