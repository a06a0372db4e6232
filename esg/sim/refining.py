"""The profiles the policies see when a run stands in for the daemon: refined by every warm
batch with the daemon's own rule (`esg.refine`).

The daemon refines a function's profile point with each batch it runs (all but the first batch
of a new sandbox, which pays one-time initialisation), so a planner there learns what a
configuration takes under the load it serves, and a point the profiler timed alone a few times
moves within a few batches. A simulator whose tables stay as given plans with the quiet
figure for ever. On the daemon benchmark, FaST-GShare-like chose `vote` at 2 vCPUs from a
0.11 ms point timed alone three times: on the daemon five batches under load took the point to
0.16 ms and the policy moved to 1 vCPU; in the simulator it stayed at 2 vCPUs, waiting each
time for the whole node to be free (queue 30-700 ms where the daemon's was 1-17 ms).

Pure bookkeeping: the engine feeds executions in; `profiles` is what the next snapshot shows.
A function whose published latency changes gets a new profile version, as on the daemon, so the
planners' caches stay valid. The policies see what the daemon's planners see
(`esg.refine.planning_table`): a configuration no batch has run yet is scaled by the function's
slowdown over those that have.
"""

from __future__ import annotations

from collections.abc import Mapping

from esg.model import Config, Profile
from esg.refine import DEFAULT_POLICY, Point, RefinePolicy, observe, planning_table


class LiveProfiles:
    """Per function: the points behind its profile, and the profile they publish.

    `points` seeds the refinement with what the driver knows of each point (how many executions
    it rests on, their spread); a configuration without one counts as profiled `rule.window`
    times without spread (as settled as a point gets) and not yet executed.
    """

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        points: Mapping[str, Mapping[Config, Point]] | None = None,
        rule: RefinePolicy = DEFAULT_POLICY,
    ) -> None:
        self.rule = rule
        self._points: dict[str, dict[Config, Point]] = {}
        self._profiles: dict[str, Profile] = dict(profiles)
        given = points or {}
        for name, profile in profiles.items():
            known = given.get(name, {})
            self._points[name] = {
                config: known.get(config) or Point.measured(ms, 0.0, rule.window)
                for config, ms in profile.latency_ms.items()
            }
        self.changes = 0

    @property
    def profiles(self) -> Mapping[str, Profile]:
        return self._profiles

    def observe(self, function: str, config: Config, exec_ms: float) -> bool:
        """One warm batch of `function` ran `config.batch` items on `config`'s vCPUs and slice in
        `exec_ms`; True when what the policies see changed (the profile has a new version)."""
        points = self._points[function]
        refined = observe(points.get(config), exec_ms, self.rule)
        points[config] = refined.point
        if refined.changed:
            old = self._profiles[function]
            table = planning_table(points)
            self._profiles[function] = Profile(function, table, version=old.version + 1)
            self.changes += 1
        return refined.changed
