"""The profile store: measured and fitted points per (function, version, configuration), the
profile versions planners cache on, and measured cold starts, in one SQLite file.

Everything is held in memory and written through to `<state_dir>/profiles.sqlite` (WAL), so a
restarted daemon plans with the profiles it had. Reads never touch the disk: `profiles()` and
`cold_starts_ms()` return read-only views built once per change, cheap enough for the controller
to call on every scheduling event.

Writes come in two speeds. A profile run (`record`) and a cold start are committed at once.
Online refinements (`observe`, one per executed batch) change memory only and are committed by
`flush()` — the profile service calls it every few seconds and at shutdown — so the hot path pays
no disk write; a crash loses at most the refinements since the last flush.

Profile versions come from one counter for the whole store (kept in the file), bumped whenever
what planners see changes anywhere: a published latency, or a point's first execution (it stops
being scaled by the function's slowdown under load, `esg.refine.planning_table`). A version
therefore names one table exactly, across functions, function versions and restarts: a
planner's cache keyed on it cannot mistake one for another.

Only the function's *current* version (told by `set_current`, at every deploy and removal) is
in `profiles()`; a redeploy starts a new, empty profile (the new version may be another model),
and the store keeps the rows of the previous version only, for a quick rollback.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from esg.model import Config, Profile
from esg.refine import DEFAULT_POLICY, Point, RefinePolicy, observe, planning_table

FILENAME = "profiles.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    function TEXT NOT NULL, version INTEGER NOT NULL,
    batch INTEGER NOT NULL, vcpu INTEGER NOT NULL, vgpu INTEGER NOT NULL,
    mean_ms REAL NOT NULL, var_ms2 REAL NOT NULL, count INTEGER NOT NULL,
    fitted INTEGER NOT NULL, published_ms REAL NOT NULL,
    executions INTEGER NOT NULL DEFAULT 0, profiled_ms REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (function, version, batch, vcpu, vgpu)
);
CREATE TABLE IF NOT EXISTS versions (
    function TEXT NOT NULL, version INTEGER NOT NULL, profile_version INTEGER NOT NULL,
    PRIMARY KEY (function, version)
);
CREATE TABLE IF NOT EXISTS current (function TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cold_starts (
    function TEXT NOT NULL, version INTEGER NOT NULL,
    count INTEGER NOT NULL, mean_ms REAL NOT NULL, max_ms REAL NOT NULL,
    PRIMARY KEY (function, version)
);
"""

#: Columns added since the first release, for files written before them: an old point reads
#: as one neither profiled nor executed, which `planning_table` leaves as it is.
_ADDED_COLUMNS = {
    "executions": "INTEGER NOT NULL DEFAULT 0",
    "profiled_ms": "REAL NOT NULL DEFAULT 0",
}

Key = tuple[str, int]


@dataclass(frozen=True)
class ColdStarts:
    """Cold starts measured for one function version: how many, their mean and maximum (ms)."""

    count: int
    mean_ms: float
    max_ms: float

    def add(self, ms: float) -> ColdStarts:
        count = self.count + 1
        return ColdStarts(count, self.mean_ms + (ms - self.mean_ms) / count, max(self.max_ms, ms))


class ProfileStore:
    """One daemon's profiles. Not thread-safe: use it from the event loop's thread."""

    def __init__(self, path: Path, policy: RefinePolicy = DEFAULT_POLICY) -> None:
        self.path = Path(path)
        self.policy = policy
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the default isolation level: a write opens a transaction that `with self._db` commits
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()
        self._points: dict[Key, dict[Config, Point]] = {}
        self._versions: dict[Key, int] = {}
        self._current: dict[str, int] = {}
        self._cold: dict[Key, ColdStarts] = {}
        self._dirty: set[tuple[str, int, Config]] = set()
        self._dirty_versions: set[Key] = set()
        self._generation = 0
        self._profiles_view: Mapping[str, Profile] | None = None
        self._cold_view: Mapping[str, float] | None = None
        self._closed = False
        self._load()

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> ProfileStore:
        return cls(Path(state_dir) / FILENAME)

    # ------------------------------------------------------------ reads

    def profile(self, name: str, version: int) -> Profile | None:
        """The profile planners use for `name` at function version `version`
        (`esg.refine.planning_table`); None if no point."""
        points = self._points.get((name, version))
        if not points:
            return None
        return Profile(name, planning_table(points), self._versions.get((name, version), 0))

    def profiles(self) -> Mapping[str, Profile]:
        """The profiles of the current versions (those that have one), by function name."""
        if self._profiles_view is None:
            out = {}
            for name, version in self._current.items():
                profile = self.profile(name, version)
                if profile is not None:
                    out[name] = profile
            self._profiles_view = MappingProxyType(out)
        return self._profiles_view

    def points(self, name: str, version: int) -> Mapping[Config, Point]:
        """Every point of (name, version), measured and fitted, in Config order."""
        points = self._points.get((name, version), {})
        return MappingProxyType(dict(sorted(points.items())))

    def cold_starts(self, name: str, version: int) -> ColdStarts | None:
        return self._cold.get((name, version))

    def cold_starts_ms(self) -> Mapping[str, float]:
        """Mean measured cold start (ms) of each current version that has one."""
        if self._cold_view is None:
            out = {}
            for name, version in self._current.items():
                cold = self._cold.get((name, version))
                if cold is not None:
                    out[name] = cold.mean_ms
            self._cold_view = MappingProxyType(out)
        return self._cold_view

    def current(self, name: str) -> int | None:
        return self._current.get(name)

    def has_measured(self, name: str, version: int) -> bool:
        return any(not p.fitted for p in self._points.get((name, version), {}).values())

    def profile_version(self, name: str, version: int) -> int:
        """The profile version of (name, version): 0 when it has no points."""
        return self._versions.get((name, version), 0)

    # ------------------------------------------------------------ writes

    def set_current(self, name: str, version: int | None) -> None:
        """`name` now serves `version` (None: removed). Rows of versions older than the one
        before it are deleted."""
        with self._db:
            if version is None:
                self._current.pop(name, None)
                self._db.execute("DELETE FROM current WHERE function = ?", (name,))
                self._forget(name, keep=())
            else:
                previous = self._current.get(name)
                self._current[name] = version
                self._db.execute("INSERT OR REPLACE INTO current VALUES (?, ?)", (name, version))
                keep = {version} | ({previous} if previous is not None else set())
                self._forget(name, keep=tuple(keep))
        self._invalidate()

    def record(
        self,
        name: str,
        version: int,
        measured: Mapping[Config, Point],
        fitted: Mapping[Config, float],
    ) -> int:
        """A profile run's result: `measured` points replace those configurations' points;
        `fitted` values fill configurations that have no measured point (a measured point,
        from an earlier run or a real execution, is never overwritten by a fit). Committed at
        once; returns the new profile version."""
        key = (name, version)
        points = self._points.setdefault(key, {})
        for config, point in measured.items():
            points[config] = point
        for config, ms in fitted.items():
            old = points.get(config)
            if old is None or old.fitted:
                points[config] = Point.fit(ms)
        new_version = self._bump(key)
        with self._db:
            self._write_points(name, version, points.items())
            self._write_version(key)
        self._dirty = {d for d in self._dirty if d[:2] != key}
        return new_version

    def observe(self, name: str, version: int, config: Config, exec_ms: float) -> bool:
        """One real execution of a batch at `config` that took `exec_ms`; True when it changed
        the profile planners see (and so its version). In memory until `flush()`."""
        key = (name, version)
        points = self._points.setdefault(key, {})
        refined = observe(points.get(config), exec_ms, self.policy)
        points[config] = refined.point
        self._dirty.add((name, version, config))
        if refined.changed:
            self._bump(key)
            self._dirty_versions.add(key)
        return refined.changed

    def observe_cold_start(self, name: str, version: int, ms: float) -> None:
        """A measured cold start of (name, version), committed at once (they are rare);
        ignored once the store is closed (a batch that outlived the daemon's drain)."""
        if not ms > 0 or self._closed:
            return
        key = (name, version)
        old = self._cold.get(key)
        cold = ColdStarts(1, ms, ms) if old is None else old.add(ms)
        self._cold[key] = cold
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO cold_starts VALUES (?, ?, ?, ?, ?)",
                             (name, version, cold.count, cold.mean_ms, cold.max_ms))
        self._cold_view = None

    def flush(self) -> int:
        """Commit the refinements made since the last flush; returns how many points."""
        if not self._dirty and not self._dirty_versions:
            return 0
        dirty, self._dirty = self._dirty, set()
        versions, self._dirty_versions = self._dirty_versions, set()
        with self._db:
            for name, version, config in dirty:
                point = self._points.get((name, version), {}).get(config)
                if point is not None:
                    self._write_points(name, version, [(config, point)])
            for key in versions:
                if key in self._versions:
                    self._write_version(key)
        return len(dirty)

    def close(self) -> None:
        """Flush and close the file; closing again does nothing."""
        if self._closed:
            return
        self.flush()
        self._db.close()
        self._closed = True

    # ------------------------------------------------------------ internals

    def _bump(self, key: Key) -> int:
        self._generation += 1
        self._versions[key] = self._generation
        self._invalidate()
        return self._generation

    def _invalidate(self) -> None:
        self._profiles_view = None
        self._cold_view = None

    def _write_points(
        self, name: str, version: int, items: Iterable[tuple[Config, Point]]
    ) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_point_row(name, version, c, p) for c, p in items],
        )

    def _write_version(self, key: Key) -> None:
        """The profile version of `key`, and the counter it came from (same transaction)."""
        self._db.execute("INSERT OR REPLACE INTO versions VALUES (?, ?, ?)",
                         (*key, self._versions[key]))
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)",
                         (self._generation,))

    def _forget(self, name: str, keep: tuple[int, ...]) -> None:
        # "NOT IN ()" is no SQL, and "NOT IN (NULL)" is never true: keep nothing = no filter
        spare = f" AND version NOT IN ({','.join('?' * len(keep))})" if keep else ""
        for table in ("points", "versions", "cold_starts"):
            self._db.execute(f"DELETE FROM {table} WHERE function = ?{spare}", (name, *keep))
        def gone(key: Key) -> bool:
            return key[0] == name and key[1] not in keep

        for key in [k for k in self._points if gone(k)]:
            del self._points[key]
        for key in [k for k in self._versions if gone(k)]:
            del self._versions[key]
        for key in [k for k in self._cold if gone(k)]:
            del self._cold[key]
        self._dirty = {d for d in self._dirty if d[0] != name or d[1] in keep}

    def _add_missing_columns(self) -> None:
        have = {row[1] for row in self._db.execute("PRAGMA table_info(points)")}
        with self._db:
            for column, kind in _ADDED_COLUMNS.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE points ADD COLUMN {column} {kind}")

    def _load(self) -> None:
        db = self._db
        row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        self._generation = int(row[0]) if row else 0
        for (name, version, b, c, g, mean, var, count, fitted, published, executions,
             profiled) in db.execute(
            "SELECT function, version, batch, vcpu, vgpu, mean_ms, var_ms2, count, fitted, "
            "published_ms, executions, profiled_ms FROM points"
        ):
            self._points.setdefault((name, version), {})[Config(b, c, g)] = Point(
                mean, var, count, bool(fitted), published, executions, profiled
            )
        for name, version, pv in db.execute("SELECT * FROM versions"):
            self._versions[(name, version)] = pv
        for name, version in db.execute("SELECT * FROM current"):
            self._current[name] = version
        for name, version, count, mean, top in db.execute("SELECT * FROM cold_starts"):
            self._cold[(name, version)] = ColdStarts(count, mean, top)


def _point_row(
    name: str, version: int, config: Config, point: Point
) -> tuple[str, int, int, int, int, float, float, int, int, float, int, float]:
    return (name, version, config.batch, config.vcpu, config.vgpu, point.mean_ms,
            point.var_ms2, point.count, int(point.fitted), point.published_ms,
            point.executions, point.profiled_ms)
