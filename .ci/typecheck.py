"""mypy (strict, pyproject's settings) on the package as it is installed.

pyproject's ``package-dir`` maps ``cli/`` and ``projections/`` into ``colonies_es`` (the
design card's layout); mypy cannot follow such a mapping, so it would see
``colonies_es.cli`` and ``colonies_es.projections`` as missing. This script builds, in
a temporary directory, a tree of symbolic links that puts every source file where the
installed package has it, and runs ``mypy -p colonies_es`` there. Errors name files as
``colonies_es/cli/app.py``: that is ``cli/app.py`` in the repository.

Usage: python .ci/typecheck.py  (from anywhere; exit status is mypy's)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "colonies_es"


def link_tree(target: Path) -> None:
    """Lay out ``PACKAGE`` under ``target`` as pyproject's ``package-dir`` installs it."""
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]["package-dir"]
    mapped = {package: ROOT / directory for package, directory in mapping.items()}
    root = target / PACKAGE
    root.mkdir()
    subpackages = {
        package.removeprefix(f"{PACKAGE}."): directory
        for package, directory in mapped.items()
        if package != PACKAGE
    }
    for entry in mapped[PACKAGE].iterdir():
        if entry.name not in subpackages and entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry)
    for name, directory in subpackages.items():
        (root / name).symlink_to(directory)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="colonies-mypy-") as scratch:
        link_tree(Path(scratch))
        command = [
            sys.executable, "-m", "mypy",
            "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(ROOT / ".mypy_cache"),
            "-p", PACKAGE,
        ]  # fmt: skip
        return subprocess.run(command, cwd=scratch, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
