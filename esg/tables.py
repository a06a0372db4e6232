"""Per-profile option tables for a planning policy, built once per profile version and reused.

A policy sees the same `Profile` objects in snapshot after snapshot; pricing them, filtering
them to what the cluster can run and sorting/K-filtering them (`esg.search.prepare_options`)
is done once per (function, profile content, capacity, max batch, head restriction) and kept
in bounded dictionaries. Profiles are recognised by identity first, then by content, so a
driver that rebuilds equal `Profile` objects (or forgets to bump `version`) never gets a stale
table.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from esg.model import Config, Profile
from esg.pricing import Pricing
from esg.profiles import Capacity, priced_options
from esg.search import Option, PreparedOptions, prepare_options

_MAX_ENTRIES = 4096


class OptionTables:
    """Priced and prepared options per function, cached by profile generation."""

    def __init__(self, pricing: Pricing, k: int) -> None:
        self.pricing = pricing
        self.k = k
        self._seen: dict[str, tuple[Profile, int]] = {}
        self._generation = 0
        self._priced: dict[Hashable, tuple[Option, ...]] = {}
        self._prepared: dict[Hashable, PreparedOptions] = {}
        self._extremes: dict[Hashable, tuple[float, float] | None] = {}

    def generation(self, profile: Profile) -> int:
        """A number that changes whenever the function's table does (even if `version` did not)."""
        seen = self._seen.get(profile.function)
        if seen is not None and seen[0] is profile:
            return seen[1]
        same = (
            seen is not None
            and seen[0].version == profile.version
            and seen[0].latency_ms == profile.latency_ms
        )
        if same and seen is not None:
            generation = seen[1]
        else:
            self._generation += 1
            generation = self._generation
        self._seen[profile.function] = (profile, generation)
        return generation

    def priced(
        self, profile: Profile, capacity: Capacity, max_batch: int | None
    ) -> tuple[Option, ...]:
        """The profile's runnable configurations, priced per request."""
        key = (profile.function, self.generation(profile), capacity, max_batch)
        options = self._priced.get(key)
        if options is None:
            options = tuple(priced_options(profile, self.pricing, capacity, max_batch))
            _store(self._priced, key, options)
        return options

    def extremes(
        self, profile: Profile, capacity: Capacity, max_batch: int | None
    ) -> tuple[float, float] | None:
        """(the fastest runnable latency, the latency at the cheapest configuration for one
        request alone; ties: the faster), in ms; None when nothing is runnable. The SLO split
        asks for these on every decision; finding them again each time took about a tenth of
        ESG+'s decision time."""
        key = (profile.function, self.generation(profile), capacity, max_batch)
        if key in self._extremes:
            return self._extremes[key]
        options = self.priced(profile, capacity, max_batch)
        extremes = None
        if options:
            alone = min(options, key=lambda o: (o.cost * o.config.batch, o.latency_ms))
            extremes = (min(o.latency_ms for o in options), alone.latency_ms)
        _store(self._extremes, key, extremes)
        return extremes

    def prepared(
        self,
        profile: Profile,
        capacity: Capacity,
        max_batch: int | None,
        jobs: int | None = None,
        only: frozenset[Config] | None = None,
    ) -> PreparedOptions:
        """`priced` sorted and K-filtered for the search; for the head of a plan optionally
        restricted to the configurations in `only` and run with just `jobs` jobs."""
        key = (profile.function, self.generation(profile), capacity, max_batch, jobs, only)
        prepared = self._prepared.get(key)
        if prepared is None:
            options = self.priced(profile, capacity, max_batch)
            if only is not None:
                options = tuple(o for o in options if o.config in only)
            if jobs is not None:
                options = tuple(partial_batch(o, jobs) for o in options)
            prepared = prepare_options(options, self.k, profile.function)
            _store(self._prepared, key, prepared)
        return prepared


def partial_batch(option: Option, jobs: int) -> Option:
    """`option` run with only `jobs` jobs: a batch configuration that large or larger costs the
    same per batch (its latency taken as the full batch's, a safe upper bound), shared by fewer
    requests."""
    if option.config.batch <= jobs:
        return option
    return Option(option.config, option.latency_ms, option.cost * option.config.batch / jobs)


def _store(cache: dict[Hashable, Any], key: Hashable, value: Any) -> None:
    if len(cache) >= _MAX_ENTRIES:
        cache.clear()  # rare: profiles changed thousands of times; rebuilding is cheap
    cache[key] = value


def fastest_by_function(
    tables: OptionTables,
    profiles: Mapping[str, Profile],
    functions: tuple[str, ...],
    capacity: Capacity,
    max_batch: Mapping[str, int | None],
) -> dict[str, float]:
    """Each profiled function's fastest runnable latency (ms)."""
    fastest = {}
    for f in functions:
        profile = profiles.get(f)
        extremes = None if profile is None else tables.extremes(profile, capacity, max_batch.get(f))
        if extremes is not None:
            fastest[f] = extremes[0]
    return fastest


def cheapest_alone_by_function(
    tables: OptionTables,
    profiles: Mapping[str, Profile],
    functions: tuple[str, ...],
    capacity: Capacity,
    max_batch: Mapping[str, int | None],
) -> dict[str, float]:
    """Each profiled function's latency (ms) at its cheapest runnable configuration for one
    request alone (a batch configuration costs its whole batch then); ties: the faster."""
    cheapest = {}
    for f in functions:
        profile = profiles.get(f)
        extremes = None if profile is None else tables.extremes(profile, capacity, max_batch.get(f))
        if extremes is not None:
            cheapest[f] = extremes[1]
    return cheapest
