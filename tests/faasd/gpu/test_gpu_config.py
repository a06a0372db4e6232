"""The gpu: section through faasd's own configuration loading, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from faasd.config import ConfigError, DaemonConfig, load_config
from faasd.daemon import Daemon
from faasd.gpu.settings import GpuSettings

REPO = Path(__file__).resolve().parents[3]


def test_the_documented_defaults_load_and_env_overrides_them() -> None:
    config = load_config(REPO / "configs" / "faasd.yaml", env={})
    assert config.gpu == GpuSettings()
    config = load_config(REPO / "configs" / "faasd.yaml",
                         env={"FAASD_GPU_FAKE": "a100-40gb-mig", "FAASD_GPU_MODE": "mig"})
    assert (config.gpu.fake, config.gpu.mode) == ("a100-40gb-mig", "mig")


def test_bad_gpu_settings_name_where_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "faasd.yaml"
    path.write_text("gpu: {mode: vgpu}\n")
    with pytest.raises(ConfigError, match=rf"{path}: gpu\.mode must be one of auto"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match=r"FAASD_GPU_FAKE: gpu\.mode must be one of"):
        load_config(None, env={"FAASD_GPU_MODE": "all"})
    path.write_text("gpu: mig\n")
    with pytest.raises(ConfigError, match="gpu must be a mapping"):
        load_config(path, env={})


async def test_an_unknown_fake_machine_stops_the_start_with_the_names(tmp_path: Path) -> None:
    config = DaemonConfig(port=0, state_dir=tmp_path / "state", gpu=GpuSettings(fake="v100"))
    with pytest.raises(ConfigError, match="gpu: no fake GPU machine 'v100'; choose one of: "
                       "a100-40gb, a100-40gb-mig"):
        async with Daemon(config):
            pass
