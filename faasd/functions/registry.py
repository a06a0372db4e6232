"""Installed functions on disk: immutable versions and an atomically switched current one.

Layout under `<state_dir>/functions/<name>/`:

    counter        the highest version number ever given to this name (never reused, so a
                   sandbox of a removed function can never be mistaken for a new one)
    current        the current version number; replaced with write-temp + os.replace
    <n>/           version n: a copy of the deployed directory, files read-only
    <n>.json       version n's metadata (settings, tensors, handler hooks, deployed_at, the
                   source digest), written at commit; a version directory without one is
                   staged (or was left by a crash mid-deploy and is removed at the next start)
    .staging-<n>/  a copy in progress, renamed to <n>/ when complete

`stage` validates (faasd.functions.loader) and copies; `commit` records what the sandbox found
and switches `current`; a new Registry over the same state directory serves the same current
versions. Each version records a digest of what it was deployed from (every copied file's path
and bytes, and the effective settings): `unchanged` tells whether a source directory would
install exactly the current version again, so `faasd up --functions DIR` does not pile up a
new version of every function at every start. The newest `keep_versions` committed versions
of a name are kept (calls still in flight on the previous version keep their files); older
ones are pruned at each commit.

One process owns a state directory. Methods take a lock, so `stage` may run in a worker thread
(`asyncio.to_thread`) while the event loop reads `get`/`list`.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from faasd.clock import Clock, SystemClock
from faasd.errors import DeployError, InsufficientStorage, NotFound
from faasd.functions.integrity import differences, installed_files, replace_directory
from faasd.functions.loader import PBTXT_FILE, SETTINGS_FILE, FunctionSource, load_function
from faasd.functions.spec import (
    NAME_PATTERN,
    FunctionSettings,
    FunctionVersion,
    ModelInfo,
    TensorSpec,
)
from faasd.functions.tree import IGNORED_NAMES, copy_regular, open_regular

log = logging.getLogger("faasd.functions")

METADATA_FORMAT = 1
_IGNORED_NAMES = IGNORED_NAMES
_NUMERIC = re.compile(r"^[0-9]+$")


class Registry:
    """The functions installed under `<state_dir>/functions/`, by name."""

    def __init__(
        self,
        state_dir: Path,
        defaults: FunctionSettings,
        *,
        clock: Clock | None = None,
        keep_versions: int = 3,
    ) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        self.root = state_dir / "functions"
        self.root.mkdir(parents=True, exist_ok=True)
        self._defaults = defaults
        self._clock: Clock = clock or SystemClock()
        self._keep = keep_versions
        self._lock = threading.RLock()
        self._current: dict[str, FunctionVersion] = {}
        #: the source digest of each current version ("" if it predates digests)
        self._digests: dict[str, str] = {}
        self._staged: dict[tuple[str, int], tuple[FunctionSource, str, dict[str, str]]] = {}
        #: name -> why its current version is not served (its installed files are damaged)
        self._problems: dict[str, str] = {}
        for directory in sorted(self.root.iterdir()):
            if directory.is_dir() and NAME_PATTERN.match(directory.name):
                self._recover(directory)

    # ------------------------------------------------------------ look-ups

    def get(self, name: str) -> FunctionVersion | None:
        """The current version of `name`, or None."""
        with self._lock:
            return self._current.get(name)

    def list(self) -> list[FunctionVersion]:
        """Every function's current version, by name."""
        with self._lock:
            return [self._current[name] for name in sorted(self._current)]

    def unchanged(self, source: Path, name: str | None = None) -> FunctionVersion | None:
        """The current version if deploying `source` now would install exactly it again (same
        files, same effective settings), else None. DeployError if `source` does not pass the
        static checks."""
        checked = load_function(source, self._defaults, name)
        digest = source_digest(checked)
        with self._lock:
            current = self._current.get(checked.name)
            if current is None or self._digests.get(checked.name) != digest:
                return None
            return current

    def name_of(self, source: Path, name: str | None = None) -> str:
        """The name deploying `source` would install (`name`, config.pbtxt's, or the
        directory's); DeployError if `source` does not pass the static checks."""
        return load_function(source, self._defaults, name).name

    def problem(self, name: str) -> str | None:
        """Why `name`'s current version is not served (see `verify`), or None."""
        with self._lock:
            return self._problems.get(name)

    def verify(self) -> dict[str, str]:
        """Check every current version's installed files against the digests recorded when
        it was staged. A damaged copy is restored from its source if the source still holds
        exactly what was deployed; else the function is marked not ready (`problem`). Every
        finding is logged with what differs. Returns name -> what was found and done."""
        report: dict[str, str] = {}
        for version in self.list():
            found = self._verify_one(version)
            if found is not None:
                report[version.name] = found
        return report

    def _verify_one(self, version: FunctionVersion) -> str | None:
        home = self.root / version.name
        try:
            doc = json.loads((home / f"{version.version}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        recorded = doc.get("installed_files") if isinstance(doc, dict) else None
        if not isinstance(recorded, dict):
            return None  # metadata from before installed digests: nothing to compare
        try:
            actual = installed_files(version.directory)
        except (OSError, DeployError) as exc:
            actual = {"(unreadable)": str(exc)}
        diff = differences(recorded, actual)
        if not diff:
            return None
        what = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
        log.error("%s v%d: installed files differ from what was deployed: %s",
                  version.name, version.version, what)
        if self._restore(version, doc, recorded):
            log.warning("%s v%d: restored from %s", version.name, version.version,
                        doc.get("source"))
            return f"restored from its source ({what})"
        reason = (f"v{version.version}'s installed files are damaged ({what}) and its source "
                  "no longer holds what was deployed; deploy the function again")
        with self._lock:
            self._problems[version.name] = reason
        return f"not ready: {reason}"

    def _restore(self, version: FunctionVersion, doc: dict[str, Any],
                 recorded: dict[str, str]) -> bool:
        """Copy the source again if it still matches the recorded source digest."""
        source_dir = doc.get("source")
        if not isinstance(source_dir, str) or not Path(source_dir).is_dir():
            return False
        fresh = version.directory.parent / f".restore-{version.version}"
        try:
            source = load_function(Path(source_dir), self._defaults, version.name)
            if source_digest(source) != doc.get("source_digest"):
                return False
            shutil.rmtree(fresh, ignore_errors=True)
            _copy_function(source, fresh)
            if installed_files(fresh) != recorded:
                return False
            replace_directory(version.directory, fresh)
        except (OSError, DeployError) as exc:
            log.warning("%s: cannot restore from %s: %s", version.name, source_dir, exc)
            return False
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
        return True

    def versions(self, name: str) -> builtins.list[int]:
        """The committed versions of `name` still on disk, oldest first."""
        with self._lock:
            return self._committed(self.root / name)

    # ------------------------------------------------------------ changes

    def stage(self, source: Path, name: str | None = None) -> FunctionVersion:
        """Validate `source` and copy it into a new version directory (not yet current).

        Raises DeployError naming the file and the fix. The returned version has no tensors
        yet: `SandboxPool.inspect` finds them, `commit` records them.
        """
        checked = load_function(source, self._defaults, name)
        digest = source_digest(checked)  # before the copy: what was checked is what is hashed
        home = self.root / checked.name
        number = 0
        try:
            with self._lock:
                home.mkdir(exist_ok=True)
                number = self._next_number(home)
            # The copy may take a while; the lock is not held, so look-ups carry on meanwhile.
            staging = home / f".staging-{number}"
            _copy_function(checked, staging)
            files = installed_files(staging)
            staging.rename(home / str(number))
        except (OSError, InsufficientStorage) as exc:
            with self._lock:
                self._abandon(home, number)
            if isinstance(exc, InsufficientStorage) or exc.errno == errno.ENOSPC:
                raise InsufficientStorage(
                    f"no space left on the daemon's disk to install {checked.name}; free space "
                    "in the state directory (older versions, uploads) and deploy again"
                ) from exc
            raise DeployError(f"cannot copy {checked.directory} into the state directory: "
                              f"{exc}", file=str(checked.directory)) from exc
        with self._lock:
            self._staged[(checked.name, number)] = (checked, digest, files)
        log.info("staged %s v%d from %s", checked.name, number, checked.directory)
        return _version_of(checked, home / str(number), number)

    def _abandon(self, home: Path, number: int) -> None:
        """Remove what a stage that failed midway left: its copy, a temporary counter, and
        the name's directory and counter when the name has no other version."""
        if number:
            shutil.rmtree(home / f".staging-{number}", ignore_errors=True)
            shutil.rmtree(home / str(number), ignore_errors=True)
        (home / ".counter.tmp").unlink(missing_ok=True)
        if home.name not in self._current and not self._committed(home) and not any(
            n == home.name for n, _ in self._staged
        ):
            shutil.rmtree(home, ignore_errors=True)

    def commit(self, staged: FunctionVersion, info: ModelInfo) -> FunctionVersion:
        """Record what inspecting `staged` revealed and make it the current version, atomically.

        Raises DeployError (and leaves the current version as it was) if `info` contradicts
        the directory: batching asked of a model with a fixed batch dimension, or tensors that
        config.pbtxt declares and the model does not have. The caller discards `staged` then.
        """
        with self._lock:
            entry = self._staged.get((staged.name, staged.version))
            if entry is None:
                raise ValueError(f"{staged.name} v{staged.version} is not staged")
            source, digest, files = entry
            _check_against_model(source, info)
            final = dataclasses.replace(
                staged,
                inputs=info.inputs,
                outputs=info.outputs,
                batched=info.batched,
                has_preprocess=info.has_preprocess,
                has_postprocess=info.has_postprocess,
                deployed_at=self._clock.wall(),
            )
            home = self.root / staged.name
            metadata = {**_to_json(final), "source_digest": digest,
                        "source": str(source.directory), "installed_files": files}
            _write_atomic(home / f"{staged.version}.json", json.dumps(metadata, indent=2))
            _write_atomic(home / "current", f"{staged.version}\n")
            del self._staged[(staged.name, staged.version)]
            self._current[staged.name] = final
            self._digests[staged.name] = digest
            self._problems.pop(staged.name, None)
            self._prune(home, final.version)
        log.info("%s v%d is current", final.name, final.version)
        return final

    def discard(self, staged: FunctionVersion) -> None:
        """Delete a staged version that will not be committed. Harmless if already gone.

        A name's first deploy that is rejected leaves nothing behind (its directory and
        counter go, so the first deploy that works is v1); a later number is not given back,
        as numbers of a name that has had versions are never reused."""
        with self._lock:
            current = self._current.get(staged.name)
            if current is not None and current.version == staged.version:
                raise ValueError(f"{staged.name} v{staged.version} is current; remove() it")
            self._staged.pop((staged.name, staged.version), None)
            home = self.root / staged.name
            shutil.rmtree(home / str(staged.version), ignore_errors=True)
            (home / f"{staged.version}.json").unlink(missing_ok=True)
            if staged.version == 1 and _read_int(home / "counter") == 1:
                (home / "counter").unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # not empty: another deploy is staging
                    home.rmdir()

    def remove(self, name: str) -> FunctionVersion:
        """Uninstall `name` (all its versions); returns the version that was current.

        The `current` pointer goes first, so a crash midway leaves the function removed.
        """
        with self._lock:
            version = self._current.pop(name, None)
            if version is None:
                raise NotFound(f"no function named {name!r}")
            self._digests.pop(name, None)
            self._problems.pop(name, None)
            home = self.root / name
            (home / "current").unlink(missing_ok=True)
            _sync_directory(home)
            staged = {n for (staged_name, n) in self._staged if staged_name == name}
            for number in self._committed(home):
                if number not in staged:
                    self._delete_version(home, number)
        log.info("removed %s (was v%d)", name, version.version)
        return version

    # ------------------------------------------------------------ disk

    def _next_number(self, home: Path) -> int:
        on_disk = [int(p.name) for p in home.iterdir() if _NUMERIC.match(p.name)]
        number = max([_read_int(home / "counter") or 0, *on_disk]) + 1
        _write_atomic(home / "counter", f"{number}\n")
        return number

    def _committed(self, home: Path) -> builtins.list[int]:
        if not home.is_dir():
            return []
        return sorted(
            int(p.stem) for p in home.glob("*.json")
            if _NUMERIC.match(p.stem) and (home / p.stem).is_dir()
        )

    def _prune(self, home: Path, current: int) -> None:
        committed = self._committed(home)
        for number in committed[: max(0, len(committed) - self._keep)]:
            if number != current:
                self._delete_version(home, number)

    @staticmethod
    def _delete_version(home: Path, number: int) -> None:
        (home / f"{number}.json").unlink(missing_ok=True)
        shutil.rmtree(home / str(number), ignore_errors=True)

    def _recover(self, home: Path) -> None:
        """Load `home`'s current version; remove what a crash mid-deploy left behind."""
        for leftover in home.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for temporary in home.glob(".*.tmp"):
            temporary.unlink(missing_ok=True)
        for path in home.iterdir():
            committed = (home / f"{path.name}.json").exists()
            if _NUMERIC.match(path.name) and path.is_dir() and not committed:
                log.warning("removing %s: staged but never committed", path)
                shutil.rmtree(path, ignore_errors=True)
        number = _read_int(home / "current")
        if number is None:
            return
        candidates = [number] + [n for n in reversed(self._committed(home)) if n != number]
        for candidate in candidates:
            version = _read_version(home, candidate)
            if version is not None:
                if candidate != number:
                    log.error("%s: current version %d is unreadable; serving %d",
                              home.name, number, candidate)
                    _write_atomic(home / "current", f"{candidate}\n")
                self._current[home.name] = version
                self._digests[home.name] = _read_digest(home, candidate)
                return
        log.error("%s: no readable version left; the function is not served", home.name)


# ---------------------------------------------------------------- helpers


def _version_of(source: FunctionSource, directory: Path, number: int) -> FunctionVersion:
    def inside(path: Path | None) -> Path | None:
        return None if path is None else directory / path.relative_to(source.directory)

    return FunctionVersion(
        name=source.name,
        version=number,
        directory=directory,
        model_path=directory / source.model_path.relative_to(source.directory),
        settings=source.settings,
        handler_path=inside(source.handler_path),
        labels_path=inside(source.labels_path),
    )


def _ignore_for(source: FunctionSource) -> Callable[[str, list[str]], Iterable[str]]:
    """What a deploy leaves behind: caches, VCS data and unserved Triton versions."""
    model_relative = source.model_path.relative_to(source.directory)
    served = model_relative.parts[0] if len(model_relative.parts) > 1 else None

    def ignore(directory: str, names: list[str]) -> Iterable[str]:
        top = Path(directory) == source.directory
        return [
            n for n in names
            if n in _IGNORED_NAMES or n.endswith(".pyc")
            or (top and _NUMERIC.match(n) and n != served and (Path(directory) / n).is_dir())
        ]

    return ignore


def source_digest(source: FunctionSource) -> str:
    """sha256 of what deploying `source` installs: the path and bytes of every file the copy
    takes (symlinks followed, as the copy does) and the effective settings, in a fixed order."""
    ignore = _ignore_for(source)
    digest = hashlib.sha256()
    settings = dataclasses.asdict(source.settings)
    settings["env"] = dict(source.settings.env)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    model = source.model_path.relative_to(source.directory).as_posix()
    digest.update(f"\0model\0{model}".encode())
    for directory, subdirectories, files in os.walk(source.directory, followlinks=True):
        skipped = set(ignore(directory, [*subdirectories, *files]))
        subdirectories[:] = sorted(d for d in subdirectories if d not in skipped)
        for name in sorted(f for f in files if f not in skipped):
            path = Path(directory) / name
            relative = path.relative_to(source.directory).as_posix()
            digest.update(f"\0file\0{relative}\0".encode())
            with open_regular(path) as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def _copy_function(source: FunctionSource, destination: Path) -> None:
    """Copy the function directory (all but what `_ignore_for` names), following symlinks,
    and make every copied file read-only."""
    shutil.copytree(source.directory, destination, ignore=_ignore_for(source), symlinks=False,
                    copy_function=copy_regular)
    read_only = ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    for path in destination.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode & read_only)
        elif path.is_dir():  # directories stay ours to prune (copytree copied their modes)
            path.chmod(path.stat().st_mode | stat.S_IRWXU)


def _check_against_model(source: FunctionSource, info: ModelInfo) -> None:
    if source.settings.max_batch_size > 1 and not info.batched:
        fixed = ", ".join(f"{s.name} {list(s.shape)}" for s in info.inputs)
        culprit = _file_setting(source, "max_batch_size")
        raise DeployError(
            f"{culprit} asks for batches of up to {source.settings.max_batch_size}, but the "
            f"model's batch dimension is fixed ({fixed}); set max_batch_size to 1 there, or "
            "export the model with a dynamic first dimension",
            file=str(culprit),
        )
    pbtxt = source.directory / PBTXT_FILE
    for kind, declared, actual in (("input", source.declared_inputs, info.inputs),
                                   ("output", source.declared_outputs, info.outputs)):
        found = {spec.name: spec for spec in actual}
        for spec in declared:
            problem = _mismatch(spec, found.get(spec.name), list(found))
            if problem:
                raise DeployError(f"{pbtxt}: {kind} {spec.name!r} {problem}; fix config.pbtxt "
                                  "or delete its input/output blocks", file=str(pbtxt))


def _mismatch(declared: TensorSpec, actual: TensorSpec | None, names: list[str]) -> str:
    if actual is None:
        return f"is not in the model (the model has {', '.join(names) or 'none'})"
    if actual.datatype != declared.datatype:
        return f"is {actual.datatype} in the model, not {declared.datatype}"
    same_rank = len(actual.shape) == len(declared.shape)
    if not same_rank or any(a != d and -1 not in (a, d)
                            for a, d in zip(actual.shape, declared.shape, strict=True)):
        return f"has shape {list(actual.shape)} in the model, not {list(declared.shape)}"
    return ""


def _file_setting(source: FunctionSource, field: str) -> Path:
    """The file that set `field`: faasd.yaml if it mentions it, else config.pbtxt."""
    settings_file = source.directory / SETTINGS_FILE
    if settings_file.exists() and field in settings_file.read_text(encoding="utf-8"):
        return settings_file
    pbtxt = source.directory / PBTXT_FILE
    return pbtxt if pbtxt.exists() else settings_file


def _to_json(version: FunctionVersion) -> dict[str, Any]:
    def relative(path: Path | None) -> str | None:
        return None if path is None else str(path.relative_to(version.directory))

    settings = dataclasses.asdict(version.settings)
    settings["env"] = dict(version.settings.env)
    return {
        "format": METADATA_FORMAT,
        "name": version.name,
        "version": version.version,
        "model": relative(version.model_path),
        "handler": relative(version.handler_path),
        "labels": relative(version.labels_path),
        "settings": settings,
        "inputs": [_spec_to_json(s) for s in version.inputs],
        "outputs": [_spec_to_json(s) for s in version.outputs],
        "batched": version.batched,
        "has_preprocess": version.has_preprocess,
        "has_postprocess": version.has_postprocess,
        "deployed_at": version.deployed_at,
    }


def _spec_to_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _read_version(home: Path, number: int) -> FunctionVersion | None:
    """Version `number` of `home` from its metadata, or None (logged) if unreadable."""
    directory = home / str(number)
    try:
        doc = json.loads((home / f"{number}.json").read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(FunctionSettings)}
        settings = FunctionSettings(**{k: v for k, v in doc["settings"].items() if k in known})
        version = FunctionVersion(
            name=home.name,
            version=number,
            directory=directory,
            model_path=directory / doc["model"],
            settings=settings,
            handler_path=None if doc["handler"] is None else directory / doc["handler"],
            labels_path=None if doc["labels"] is None else directory / doc["labels"],
            inputs=tuple(_spec_from_json(s) for s in doc["inputs"]),
            outputs=tuple(_spec_from_json(s) for s in doc["outputs"]),
            batched=bool(doc["batched"]),
            deployed_at=float(doc["deployed_at"]),
            has_preprocess=bool(doc.get("has_preprocess", False)),
            has_postprocess=bool(doc.get("has_postprocess", False)),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("%s v%d: unreadable metadata: %s", home.name, number, exc)
        return None
    if not version.model_path.is_file():
        log.error("%s v%d: %s is missing", home.name, number, version.model_path)
        return None
    return version


def _read_digest(home: Path, number: int) -> str:
    """Version `number`'s source digest; "" when its metadata predates digests."""
    try:
        doc = json.loads((home / f"{number}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    digest = doc.get("source_digest") if isinstance(doc, dict) else None
    return digest if isinstance(digest, str) else ""


def _spec_from_json(doc: dict[str, Any]) -> TensorSpec:
    return TensorSpec(str(doc["name"]), str(doc["datatype"]), tuple(int(d) for d in doc["shape"]))


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers (and a crash) see the old or the new file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
