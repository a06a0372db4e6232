"""`faasd plan`, `faasd split` and `faasd simulate` hand their arguments to the esg shells."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from faasd.auth.store import TokenStore
from faasd.auth.tokens import Scope
from faasd.cli import main


def test_plan_prints_the_cheapest_feasible_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a: 10 ms for 1.0 or 4 ms for 3.0; budget 8 ms leaves only the dearer one.
    instance = {
        "functions": [
            {
                "name": "a",
                "configs": [
                    {"batch": 1, "vcpu": 1, "vgpu": 0, "latency_ms": 10, "cost": 1.0},
                    {"batch": 1, "vcpu": 4, "vgpu": 0, "latency_ms": 4, "cost": 3.0},
                ],
            }
        ],
        "budget_ms": 8,
        "k": 2,
    }
    path = tmp_path / "instance.json"
    path.write_text(json.dumps(instance))

    assert main(["plan", str(path)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [p["cost"] for p in answer["plans"]] == [3.0]
    assert answer["plans"][0]["configs"]["a"] == {"batch": 1, "vcpu": 4, "vgpu": 0}


def test_malformed_instance_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"functions": [{"name": "a"}], "budget_ms": 3}))
    assert main(["plan", str(path)]) == 2
    assert "functions[0].configs" in capsys.readouterr().err


def test_simulate_help_is_the_simulators(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_the_readme_examples_plan_and_split(capsys: pytest.CaptureFixture[str]) -> None:
    examples = Path(__file__).resolve().parents[2] / "docs" / "examples"

    assert main(["plan", str(examples / "plan.json")]) == 0
    plans = json.loads(capsys.readouterr().out)["plans"]
    # Budget 15 ms: preprocess b1 (4 ms, 0.052) + resnet50 b4 on 1 unit (5.5 ms, 0.286) +
    # label (0.3 ms, 0.0039) = 9.8 ms for 0.3419 is the cheapest path that fits.
    assert plans[0]["cost"] == pytest.approx(0.3419)
    assert plans[0]["latency_ms"] == pytest.approx(9.8)
    assert all(p["feasible"] and p["latency_ms"] <= 15 for p in plans)

    assert main(["split", str(examples / "split.json")]) == 0
    split = json.loads(capsys.readouterr().out)
    assert split["dominators"] == ["preprocess", "composite", "encode"]
    assert sum(g["budget_ms"] for g in split["groups"]) == pytest.approx(40.0)


def test_a_listing_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    for i in range(600):  # the JSON listing outgrows a pipe's 64 KiB buffer
        store.create(Scope.INVOKE, f"t{i}", None, 1.0)
    faasd = f"{sys.executable} -m faasd.cli"
    done = subprocess.run(["sh", "-c", f"{faasd} token list -o json --state-dir {tmp_path} "
                           "| head -c 1"], capture_output=True, text=True, timeout=120)
    assert done.stdout == "[" and done.stderr == ""
