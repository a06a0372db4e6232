"""PlanCache: search answers reused only where they are provably the same.

See `esg.search` for the validity interval every answer carries.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable

from esg.group import CompiledGroup
from esg.search import SearchResult, ValidAnswer, budget_units, search_valid


class PlanCache:
    """Compiled groups and search answers, reused only where they are provably the same.

    `key` must identify the group's content (functions, edges, option tables and K): callers
    use (function names, profile versions, pricing, K, ...). For one key the cache keeps the
    last few answers with the budget interval on which each is valid (see the module
    docstring), so a hit returns exactly what a fresh search would. Bounded, least recently
    used first out; deterministic.
    """

    def __init__(self, max_groups: int = 1024, answers_per_group: int = 16) -> None:
        self._groups: OrderedDict[Hashable, tuple[CompiledGroup, list[ValidAnswer]]] = OrderedDict()
        self._max_groups = max_groups
        self._answers = answers_per_group
        self.hits = 0
        self.misses = 0

    def group(self, key: Hashable, build: Callable[[], CompiledGroup]) -> CompiledGroup:
        return self._entry(key, build)[0]

    def search(
        self, key: Hashable, build: Callable[[], CompiledGroup], budget_ms: float
    ) -> SearchResult:
        group, answers = self._entry(key, build)
        budget = budget_units(group, budget_ms)
        for i, (result, lo, hi) in enumerate(answers):
            # Nothing cut (hi infinite): the answer holds for an unlimited budget too.
            if (hi == math.inf) if budget is None else (lo <= budget < hi):
                self.hits += 1
                answers.insert(0, answers.pop(i))
                return result
        self.misses += 1
        answer = search_valid(group, budget)
        if budget is None:
            answer = (answer[0], answer[1], math.inf)
        answers.insert(0, answer)
        del answers[self._answers :]
        return answer[0]

    def _entry(
        self, key: Hashable, build: Callable[[], CompiledGroup]
    ) -> tuple[CompiledGroup, list[ValidAnswer]]:
        entry = self._groups.get(key)
        if entry is None:
            entry = (build(), [])
            self._groups[key] = entry
            while len(self._groups) > self._max_groups:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        return entry
