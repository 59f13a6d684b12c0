"""The README's test command runs every test: pytest's ``addopts`` deselects nothing (``slow`` runs by default,
``-m "not slow"`` is the opt-in quick subset, ``gpu`` tests skip themselves), and ``.ci/run`` runs that same
command from a virtual environment it installs into, once."""

from __future__ import annotations

import re
import shlex
import tomllib

from tests.helpers import ROOT


def test_a_plain_pytest_selects_every_test_and_ci_runs_the_readme_command_from_a_venv() -> None:
    opts = shlex.split(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"])
    assert not [o for o in opts if o == "-m" or o.startswith(("-m", "--deselect", "-k"))], opts
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Tests", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands[0] == "python -m pytest -q" and 'python -m pytest -q -m "not slow"' in commands
    ci = (ROOT / ".ci" / "run").read_text()
    runs = [line.strip() for line in ci.splitlines() if re.match(r"\s*python3? -m pytest", line)]
    assert runs == ["python -m pytest -q"], runs  # once, the README's command
    assert re.search(r"python3 -m venv .*\n(.*\n)*\. \"\$venv/bin/activate\"", ci), "CI runs the suite from a venv"
    assert ci.index('. "$venv/bin/activate"') < ci.index("pip install -q -e") < ci.index("python -m pytest -q")
