"""The README's two fresh-machine commands exist, and CI runs the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run contains the README's pytest command line exactly."""
    test_commands = [b for b in _bash_blocks() if "pytest" in b]
    assert len(test_commands) == 1
    assert test_commands[0] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_main_command_runs_a_bundled_scenario() -> None:
    """The README's run command names a scenario file that exists in the repo."""
    run_commands = [b for b in _bash_blocks() if "moesim run" in b]
    assert len(run_commands) == 1
    scenario = re.search(r"moesim run (\S+\.yaml)", run_commands[0])
    assert scenario and (ROOT / scenario.group(1)).is_file()
