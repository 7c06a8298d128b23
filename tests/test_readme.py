"""README.md's quick-start commands, run as written at tiny size, so that the README cannot drift from the code.

The commands are the bash block between <!-- quick-start --> and <!-- /quick-start -->. Each runs from a
temporary folder (so relative outputs land there) with overrides appended that shrink it: one short epoch for
train.py, four inputs at small n for certify.py (and few draws for the Insta-RS search)."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT, run_script

BLOCK = re.compile(r"<!-- quick-start -->\s*```(?:bash|sh)\n(.*?)```\s*<!-- /quick-start -->", re.S)
SHRINK = {
    "train.py": ["debug=fast"],
    "certify.py": ["certify.n0=16", "certify.n=200", "certify.max=4", "certify.progress=false"],
}
SEARCH_SHRINK = ["sigma_search.m=32", "sigma_search.steps=2"]  # the Insta-RS search's own draws


def quick_start_commands() -> list[list[str]]:
    """The block's commands (comments and blank lines dropped, backslash continuations joined), split as the
    shell would."""
    text = (ROOT / "README.md").read_text()
    block = BLOCK.search(text)
    assert block, ("README.md has no quick-start block: put the quick-start commands in a ```bash block between "
                   "<!-- quick-start --> and <!-- /quick-start -->")
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def runnable(command: list[str]) -> tuple[str, list[str]]:
    """(conftest.run_script's script: "train.py" or "-m module", the arguments with the tiny overrides appended)."""
    assert command[0] in ("python", "python3"), f"a quick-start command should start with python: {command}"
    if command[1] == "-m":
        return f"-m {command[2]}", command[3:]
    assert command[1] in SHRINK, f"unknown script in the quick-start: {command[1]}"
    search = SEARCH_SHRINK if "sigma_search=insta_rs" in command else []
    return command[1], [*command[2:], *SHRINK[command[1]], *search]


def test_the_quick_start_block_trains_and_certifies():
    scripts = [runnable(command)[0] for command in quick_start_commands()]
    assert "train.py" in scripts and "certify.py" in scripts, f"the quick-start should train and certify: {scripts}"


@pytest.mark.slow
def test_the_quick_start_runs_as_written(tmp_path):
    for script, args in map(runnable, quick_start_commands()):  # from tmp_path: relative outputs land there
        result = run_script(script, *args, cwd=tmp_path)
        assert "Traceback" not in result.stderr, f"{script} {shlex.join(args)}\n{result.stderr[-3000:]}"
