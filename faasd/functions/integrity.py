"""Installed versions that can be trusted: each file's digest, recorded when it is staged.

A version directory is read-only, but not immune: a full disk, a careless `rm`, an editor
run as root. Its metadata records the sha256 of every installed file (`installed_files`);
at start (and on `faasd verify`) `check_version` hashes the directory again and says what
differs: missing, changed or unexpected files. The registry then restores the copy from its
source when the source still holds exactly what was deployed, or marks the function not
ready with the reason, so that a damaged copy never answers every call with a 502.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from faasd.functions.tree import open_regular


def installed_files(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by its path relative to it (POSIX form)."""
    found: dict[str, str] = {}
    for parent, subdirectories, files in os.walk(directory):
        subdirectories.sort()
        for name in sorted(files):
            path = Path(parent) / name
            digest = hashlib.sha256()
            with open_regular(path) as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
            found[path.relative_to(directory).as_posix()] = digest.hexdigest()
    return found


def differences(recorded: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """What differs between the recorded and the actual files, one phrase per file. Pure."""
    out = [f"{name} is missing" for name in sorted(set(recorded) - set(actual))]
    out += [f"{name} has changed" for name in sorted(set(recorded) & set(actual))
            if recorded[name] != actual[name]]
    out += [f"{name} was not installed" for name in sorted(set(actual) - set(recorded))]
    return out


def replace_directory(directory: Path, fresh: Path) -> None:
    """Put `fresh` (beside `directory`, same file system) in the place of `directory`."""
    trash = Path(tempfile.mkdtemp(prefix=".damaged-", dir=directory.parent))
    os.rename(directory, trash / "old")
    os.rename(fresh, directory)
    shutil.rmtree(trash, ignore_errors=True)
