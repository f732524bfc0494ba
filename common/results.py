"""Run records (JSON, written atomically) and README tables built from them.

A README contains generated tables between marker lines:

    <!-- table:NAME -->
    ...generated markdown...
    <!-- /table:NAME -->

`fill_tables` replaces what lies between the markers; `check_tables` reports
every table whose text differs from what the result files give.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORDED_PACKAGES = ("torch", "torchvision", "numpy", "mlxtend")


def default_file_mode() -> int:
    """Return the mode that a plain open() gives a new file: 0o666 less the process umask.

    tempfile.mkstemp creates files with 0o600 instead.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(temp_name, default_file_mode())
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file; a file that is not valid JSON raises ValueError naming it."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it so that the step that wrote it runs again") from None


def git_state() -> dict[str, Any]:
    """Return the commit and dirty flag of the checkout, or None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout
        return {"git_commit": commit, "git_dirty": bool(status.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def package_versions(names=RECORDED_PACKAGES) -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_metadata(*, config_hash: str, seed: int, scale: str, hardware: str, wall_time_s: float) -> dict[str, Any]:
    """Return the provenance fields every metrics.json carries."""
    return {
        "config_hash": config_hash,
        "seed": seed,
        "scale": scale,
        "hardware": hardware,
        "wall_time_s": round(wall_time_s, 1),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        **git_state(),
    }


# ---------------------------------------------------------------- tables


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def _marker_pattern(name: str) -> re.Pattern:
    return re.compile(
        rf"(<!-- table:{re.escape(name)} -->\n)(.*?)(<!-- /table:{re.escape(name)} -->)", re.DOTALL
    )


def fill_tables(readme: Path, tables: dict[str, str]) -> str:
    """Return the README text with each named table replaced."""
    text = Path(readme).read_text()
    for name, body in tables.items():
        pattern = _marker_pattern(name)
        if not pattern.search(text):
            raise KeyError(f"{readme}: no markers for table {name!r}; add '<!-- table:{name} -->' and '<!-- /table:{name} -->'")
        text = pattern.sub(lambda match: match.group(1) + body.rstrip("\n") + "\n" + match.group(3), text)
    return text


def check_tables(readme: Path, tables: dict[str, str]) -> list[str]:
    """Return the names of tables whose README text differs from `tables`."""
    text = Path(readme).read_text()
    stale = []
    for name, body in tables.items():
        match = _marker_pattern(name).search(text)
        if match is None or match.group(2).rstrip("\n") != body.rstrip("\n"):
            stale.append(name)
    return stale


def verify_tables(readme: Path, tables: dict[str, str], *, results_dir: str, sources: str) -> int:
    """Print whether the README tables match the results and return the exit status of a --check run.

    `results_dir` names the folder of result files in the message and `sources`
    describes what the tables were built from (e.g. "17 result files").
    """
    stale = check_tables(readme, tables)
    if stale:
        print(f"error: tables {stale} in {readme} differ from {results_dir}; run `make tables` and commit the README", file=sys.stderr)
        return 1
    print(f"{readme}: {len(tables)} tables match {sources}")
    return 0

