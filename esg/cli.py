"""`python -m esg plan FILE` and `python -m esg split FILE`: the planning core on JSON files.

`plan` prints, per instance, `{"plans": [...], "expanded": n, "elapsed_ms": t}` where
`elapsed_ms` is the time of the search alone (not parsing or printing); `split` prints the SLO
groups and budgets. A file may hold one instance (one answer) or a list (a list of answers).
FILE `-` reads standard input. A malformed instance gets one line on stderr naming the field,
and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from esg.errors import InstanceError
from esg.instance import parse_plan_instance, parse_split_instance
from esg.search import Plan, compile_group, search
from esg.slo import split_slo

EXIT_USAGE = 2


def plan_answer(data: Any, where: str = "") -> dict[str, Any]:
    instance = parse_plan_instance(data, where)
    started = time.perf_counter()
    group = compile_group(instance.functions, instance.edges, instance.options, instance.k)
    result = search(group, instance.budget_ms)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    return {
        "plans": [_plan_json(p) for p in result.plans],
        "expanded": result.expanded,
        "elapsed_ms": round(elapsed_ms, 4),
    }


def split_answer(data: Any, where: str = "") -> dict[str, Any]:
    instance = parse_split_instance(data, where)
    split = split_slo(
        instance.workflow, instance.min_latency_ms, instance.slo_ms, instance.group_size
    )
    return {
        "slo_ms": split.slo_ms,
        "feasible": split.feasible,
        "dominators": list(split.dominators),
        "groups": [
            {
                "functions": list(g.functions),
                "edges": [list(e) for e in g.edges],
                "min_latency_ms": g.min_latency_ms,
                "budget_ms": g.budget_ms,
                "deadline_ms": g.deadline_ms,
            }
            for g in split.groups
        ],
    }


def _plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "cost": plan.cost,
        "latency_ms": plan.latency_ms,
        "feasible": plan.feasible,
        "configs": {
            f: {"batch": c.batch, "vcpu": c.vcpu, "vgpu": c.vgpu} for f, c in plan.configs.items()
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esg", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("plan", "top-K plans of one group (or a list of groups) within a budget"),
        ("split", "SLO groups and budgets of a workflow DAG"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("file", help="JSON file with one instance or a list of them; - for stdin")
        cmd.add_argument("--indent", type=int, default=None, help="pretty-print the JSON")
    args = parser.parse_args(argv)
    answer = plan_answer if args.command == "plan" else split_answer
    try:
        data = _load(args.file)
        if isinstance(data, list):
            output: Any = [answer(item, f"[{i}].") for i, item in enumerate(data)]
        else:
            output = answer(data)
    except InstanceError as exc:
        print(f"{parser.prog} {args.command}: {args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    json.dump(output, sys.stdout, indent=args.indent)
    sys.stdout.write("\n")
    return 0


def _load(path: str) -> Any:
    try:
        if path == "-":
            return json.load(sys.stdin)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise InstanceError("file", exc.strerror or str(exc)) from None
    except json.JSONDecodeError as exc:
        raise InstanceError("file", f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except UnicodeDecodeError:
        raise InstanceError("file", "not UTF-8 text") from None
