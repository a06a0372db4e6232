"""Node-wide ceilings: a function cannot ask for more than the node has, or than `limits:`."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from faasd.config import ConfigError, DaemonConfig, load_config
from faasd.daemon import Daemon
from faasd.functions.limits import NodeLimits, check_limits
from faasd.functions.spec import FunctionSettings
from tests.faasd.builders import make_function

NODE = NodeLimits(memory_mb=16_000, vcpu=4, timeout_s=600, max_instances=32,
                  min_instances_total=8)


@pytest.mark.parametrize(
    ("settings", "others", "key"),
    [
        (FunctionSettings(memory_mb=4_000_000), 0, "memory_mb"),
        (FunctionSettings(vcpu=5), 0, "vcpu"),
        (FunctionSettings(timeout_s=86_400), 0, "timeout_s"),
        (FunctionSettings(max_instances=33), 0, "max_instances"),
        (FunctionSettings(min_instances=3, max_instances=4), 6, "min_instances"),  # 6 + 3 > 8
        (FunctionSettings(min_instances=2, max_instances=4), 6, None),  # 6 + 2 = 8
        (FunctionSettings(memory_mb=16_000, vcpu=4, timeout_s=600, max_instances=32), 0, None),
    ],
)
def test_check_limits(settings: FunctionSettings, others: int, key: str | None) -> None:
    problem = check_limits("f", settings, NODE, others)
    assert (problem.extra["key"] if problem else None) == key


def test_zero_means_what_the_node_has() -> None:
    assert NodeLimits().resolved(8192, 2, 32) == NodeLimits(8192, 2, 3600.0, 32, 32)


def test_limits_in_the_config_file(tmp_path: Path) -> None:
    file = tmp_path / "faasd.yaml"
    file.write_text("limits: {memory_mb: 2048, timeout_s: 60}\n")
    assert load_config(file, env={}).limits == NodeLimits(memory_mb=2048, timeout_s=60.0)
    file.write_text("limits: {memory: 2048}\n")
    with pytest.raises(ConfigError, match="unknown limits key"):
        load_config(file, env={})


async def test_a_deploy_over_a_cap_is_400_naming_key_value_and_cap(tmp_path: Path) -> None:
    config = DaemonConfig(port=0, state_dir=tmp_path / "state",
                          limits=NodeLimits(memory_mb=2048, timeout_s=120))
    greedy = make_function(tmp_path / "src", "greedy", "resources: {memory_mb: 4000000}\n")
    patient = make_function(tmp_path / "src", "patient", "timeout_s: 86400\n")
    async with Daemon(config) as daemon, aiohttp.ClientSession() as session:
        for source, words in ((greedy, ("memory_mb 4000000", "cap of 2048")),
                              (patient, ("timeout_s 86400", "cap of 120"))):
            async with session.post(f"{daemon.url}/system/functions",
                                    json={"path": str(source)}) as resp:
                assert resp.status == 400
                message = (await resp.json())["error"]
            assert all(w in message for w in words), message
        assert daemon.services.catalog.list() == []
        assert not any((tmp_path / "state" / "functions").iterdir())  # nothing left behind
