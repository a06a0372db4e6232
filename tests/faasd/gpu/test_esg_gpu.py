"""ESG in the daemon on a fake GPU: it plans over CPU and GPU configurations with the slices
the node really has, and the sandbox is bound to the slice its plan names.

Profile of `solo` (by hand; pricing: a GPU unit costs 15 vCPUs, so cost ∝ (1 + 15 g) · ms):
1 vCPU 100 ms (cost 100, misses the 50 ms SLO); +1g 10 ms (160); +2g 8 ms (248); +3g 9 ms
(414); +4g 1 ms (61, the cheapest on paper). The fake H100 is cut 3g + 2g + 1g + 1g: no 4g
instance exists, so the cheapest plan this node can run is 1 vCPU + 1g.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest

from esg.model import Config, Profile
from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from faasd.gpu.settings import GpuSettings
from tests.faasd.builders import make_function

pytestmark = pytest.mark.slow

TABLE = {
    Config(1, 1): 100.0,
    Config(1, 1, 1): 10.0,
    Config(1, 1, 2): 8.0,
    Config(1, 1, 3): 9.0,
    Config(1, 1, 4): 1.0,
}


class FixedProfiles:
    def profiles(self) -> Mapping[str, Profile]:
        return {"solo": Profile("solo", TABLE, version=1)}

    def cold_starts_ms(self) -> Mapping[str, float]:
        return {}


async def test_esg_picks_the_cheapest_slice_that_exists(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "solo", "slo_ms: 50\n")
    config = DaemonConfig(port=0, state_dir=tmp_path / "state", functions_dir=functions,
                          scheduler="esg", drain_timeout_s=5,
                          gpu=GpuSettings(fake="h100-80gb-mig-mixed", health_interval_s=3600))
    async with Daemon(config, profiles=FixedProfiles()) as daemon, \
            aiohttp.ClientSession() as session:
        async with session.post(f"{daemon.url}/function/solo",
                                json={"x": [[1, 2, 3, 4]]}) as resp:
            assert resp.status == 200, await resp.text()
            device = resp.headers["X-Faasd-Device"]
        ((_, function, _, held),) = daemon.services.gpus.bound()
        assert (function, held.units, held.profile) == ("solo", 1, "1g.10gb")
        assert device == f"cpu (fake {held.device_uuid})"
