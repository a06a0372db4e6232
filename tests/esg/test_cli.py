"""`python -m esg plan|split FILE`, run as a real subprocess on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from esg.cli import main


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esg", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _write(tmp_path: Path, data: Any, name: str = "instance.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _config(b: int, v: int, g: int, ms: float, cost: float) -> dict[str, Any]:
    return {"batch": b, "vcpu": v, "vgpu": g, "latency_ms": ms, "cost": cost}


# a -> b. Plans: a1 b1 = $2, 30 ms; a2 b1 = $3, 26 ms; a1 b2 = $5, 15 ms; a2 b2 = $6, 11 ms.
CHAIN = {
    "functions": [
        {"name": "a", "configs": [_config(1, 1, 0, 10, 1), _config(1, 2, 0, 6, 2)]},
        {"name": "b", "configs": [_config(1, 1, 0, 20, 1), _config(2, 1, 1, 5, 4)]},
    ],
    "edges": [["a", "b"]],
    "budget_ms": 26,
    "k": 2,
}


def test_plan_prints_the_top_k_plans_in_the_documented_shape(tmp_path: Path) -> None:
    done = _run("plan", _write(tmp_path, CHAIN))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert set(answer) == {"plans", "expanded", "elapsed_ms"}
    assert answer["plans"] == [
        {
            "cost": 3.0,
            "latency_ms": 26.0,
            "feasible": True,
            "configs": {
                "a": {"batch": 1, "vcpu": 2, "vgpu": 0},
                "b": {"batch": 1, "vcpu": 1, "vgpu": 0},
            },
        },
        {
            "cost": 5.0,
            "latency_ms": 15.0,
            "feasible": True,
            "configs": {
                "a": {"batch": 1, "vcpu": 1, "vgpu": 0},
                "b": {"batch": 2, "vcpu": 1, "vgpu": 1},
            },
        },
    ]
    assert isinstance(answer["expanded"], int) and answer["expanded"] >= 2
    assert isinstance(answer["elapsed_ms"], float) and answer["elapsed_ms"] >= 0


def test_a_list_of_instances_gets_a_list_of_answers_and_infeasible_is_marked(
    tmp_path: Path,
) -> None:
    strict = {**CHAIN, "budget_ms": 10, "k": 1}  # below the fastest plan (11 ms)
    done = _run("plan", _write(tmp_path, [CHAIN, strict]))
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert [len(a["plans"]) for a in answers] == [2, 1]
    assert answers[1]["plans"][0]["feasible"] is False
    assert answers[1]["plans"][0]["latency_ms"] == 11.0


def test_plan_reads_standard_input() -> None:
    done = _run("plan", "-", stdin=json.dumps(CHAIN))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["plans"][0]["cost"] == 3.0


def test_split_prints_groups_and_budgets(tmp_path: Path) -> None:
    workflow = {
        "functions": [
            {"name": n, "min_latency_ms": ms}
            for n, ms in zip("abcde", [10, 40, 20, 10, 20], strict=True)
        ],
        "edges": [["a", "b"], ["a", "c"], ["b", "d"], ["c", "d"], ["d", "e"]],
        "slo_ms": 160,
    }
    done = _run("split", _write(tmp_path, workflow))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["dominators"] == ["a", "d", "e"]
    assert answer["feasible"] is True
    # Weights 10 : max(40, 20) + 10 : 20 of 160 ms.
    assert [(g["functions"], g["budget_ms"]) for g in answer["groups"]] == [
        (["a"], 20.0),
        (["b", "c", "d"], 100.0),
        (["e"], 40.0),
    ]
    assert answer["groups"][1]["edges"] == [["b", "d"], ["c", "d"]]


def _broken(path: str, value: Any) -> dict[str, Any]:
    """CHAIN with the value at a dotted path replaced (or removed when value is ...)."""
    data: dict[str, Any] = json.loads(json.dumps(CHAIN))
    *parents, last = path.split(".")
    target: Any = data
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is ...:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_broken("budget_ms", ...), "budget_ms: is required"),
        (_broken("budget_ms", "soon"), "budget_ms: must be a number"),
        (_broken("k", 0), "k: must be >= 1"),
        (_broken("functions", []), "functions: must not be empty"),
        (_broken("functions.1.name", "a"), "functions[1].name: 'a' is used twice"),
        (_broken("functions.0.configs.1.batch", 0), "functions[0].configs[1].batch: must be >= 1"),
        (
            _broken("functions.0.configs.1.vgpu", 8),
            "functions[0].configs[1].vgpu: must be at most 7",
        ),
        (_broken("functions.1.configs.0.latency_ms", -1), "functions[1].configs[0].latency_ms"),
        (_broken("functions.1.configs.0.cost", ...), "functions[1].configs[0].cost: is required"),
        (_broken("functions.1.configs.1", _config(1, 1, 0, 3, 3)), "functions[1].configs[1]: "),
        (_broken("edges", [["a", "zz"]]), "edges[0]: names unknown function 'zz'"),
        (_broken("edges", [["a", "b"], ["b", "a"]]), "edges: form a cycle"),
        (_broken("edges", [["a"]]), "edges[0]: must be a pair"),
        (_broken("extra", 1), "instance.extra: unknown field"),
        ("{not json", "file: not valid JSON"),
        ([CHAIN, _broken("k", "x")], "[1].k: must be an integer"),
    ],
)
def test_malformed_instances_get_one_line_naming_the_field_and_exit_2(
    tmp_path: Path, data: Any, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process for speed (the same `main` the module runs); subprocesses below.
    status = main(["plan", _write(tmp_path, data)])
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert field in lines[0]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_broken("functions.0.configs.1.batch", 0), "functions[0].configs[1].batch: must be >= 1"),
        ("[1, 2", "file: not valid JSON"),
    ],
)
def test_the_module_exits_2_with_one_line(tmp_path: Path, data: Any, field: str) -> None:
    done = _run("plan", _write(tmp_path, data))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and field in done.stderr


def test_a_missing_file_and_a_bad_split_are_usage_errors(tmp_path: Path) -> None:
    missing = _run("plan", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "file:" in missing.stderr
    bad = _run(
        "split", _write(tmp_path, {"functions": [{"name": "a", "min_latency_ms": 1}], "slo_ms": 0})
    )
    assert bad.returncode == 2 and "slo_ms: must be > 0" in bad.stderr
