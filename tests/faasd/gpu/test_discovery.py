"""Discovery against the fake NVML machines, and every NVML error it must survive."""

from __future__ import annotations

import re

import pynvml
import pytest

from faasd.gpu.discovery import GPU_UNITS, discover, profile_of
from faasd.gpu.fake import A100_40GB, H100_80GB, FakeNvml, machine
from faasd.gpu.nvml import load

UUID = re.compile(r"^(GPU|MIG)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_a100_cut_into_seven_1g_instances() -> None:
    inventory = discover(machine("a100-40gb-mig"))
    assert inventory.problems == ()
    assert inventory.driver == "550.54.15" and inventory.cuda_driver == 12040
    (gpu,) = inventory.gpus
    assert gpu.name == "NVIDIA A100-SXM4-40GB" and gpu.mig and gpu.memory_mb == 40960
    assert [i.profile for i in gpu.instances] == ["1g.5gb"] * 7
    assert {i.units for i in gpu.instances} == {1}
    assert {i.memory_mb for i in gpu.instances} == {4864}  # the go-nvml mock's MemorySizeMB
    uuids = [gpu.uuid, *(i.uuid for i in gpu.instances)]
    assert all(UUID.match(u) for u in uuids) and len(set(uuids)) == 8
    assert gpu.uuid.startswith("GPU-") and all(i.uuid.startswith("MIG-") for i in gpu.instances)


def test_h100_mixed_layout_with_holes_in_the_device_indices() -> None:
    inventory = discover(machine("h100-80gb-mig-mixed"))
    (gpu,) = inventory.gpus
    # GI ids 1, 3, 5, 6: indices 1 and 3 raise NotFound and are skipped, not the end of the list
    assert [(i.profile, i.units, i.gi_id) for i in gpu.instances] == [
        ("3g.40gb", 3, 1), ("2g.20gb", 2, 3), ("1g.10gb", 1, 5), ("1g.10gb", 1, 6),
    ]
    assert sum(i.units for i in gpu.instances) == GPU_UNITS
    assert [i.memory_mb for i in gpu.instances] == [40960, 20480, 10240, 10240]


def test_a100_without_mig_reports_an_mps_server() -> None:
    inventory = discover(machine("a100-40gb-mps"))
    (gpu,) = inventory.gpus
    assert not gpu.mig and gpu.instances == ()
    assert inventory.mps_server


def test_no_library_is_a_line_and_zero_gpus() -> None:
    inventory = discover(machine("no-nvml"))
    assert inventory.gpus == ()
    assert inventory.problems == ("no NVML: NVMLError_LibraryNotFound (NVML error 12); "
                                  "0 GPU units",)


def test_no_gpu_is_a_line_and_zero_gpus() -> None:
    inventory = discover(machine("no-gpu"))
    assert inventory.gpus == () and inventory.problems == ("NVML found no GPU; 0 GPU units",)


def test_a_gpu_lost_while_read_is_skipped_and_the_others_kept() -> None:
    fake = FakeNvml("two", [(A100_40GB, [("7g.40gb", 0)]), (H100_80GB, [("4g.40gb", 0)])])
    fake.lose(0)
    inventory = discover(fake)
    assert [g.index for g in inventory.gpus] == [1]
    assert inventory.problems == ("GPU 0 skipped: NVMLError_GpuIsLost (NVML error 15)",)


def test_a_pending_mig_change_makes_the_gpu_unusable_with_the_fix() -> None:
    fake = FakeNvml("pending", [(A100_40GB, None)])
    fake._gpus[0].mig_pending = True
    inventory = discover(fake)
    assert inventory.gpus[0].mig_pending
    assert "reset it" in inventory.problems[0]


def test_the_fake_answers_with_pynvml_errors_and_structs() -> None:
    fake = machine("a100-40gb-mig")
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    fake.nvmlInit()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetHandleByIndex(1)
    gpu = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceIsMigDeviceHandle(gpu).value == 0
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    assert fake.nvmlDeviceIsMigDeviceHandle(mig).value == 1
    assert fake.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig) is gpu
    assert isinstance(fake.nvmlDeviceGetMemoryInfo(mig), pynvml.c_nvmlMemory_t)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetAttributes(gpu)
    fake.attach(4242, fake.nvmlDeviceGetUUID(mig), 100 * 2**20)
    (process,) = fake.nvmlDeviceGetComputeRunningProcesses(mig)
    assert (process.pid, process.usedGpuMemory, process.gpuInstanceId) == (4242, 100 * 2**20, 1)
    assert fake.nvmlDeviceGetMemoryInfo(mig).used == 100 * 2**20
    assert fake.NVMLError_NotFound is pynvml.NVMLError_NotFound
    non_mig = FakeNvml("t", [(A100_40GB, None)])
    non_mig.nvmlInit()
    assert non_mig.nvmlDeviceGetMaxMigDeviceCount(non_mig.nvmlDeviceGetHandleByIndex(0)) == 0


@pytest.mark.parametrize(
    ("layout", "problem"),
    [
        ([("4g.20gb", 0), ("4g.20gb", 4)], "cannot start at memory slice 4"),  # one 4g only
        ([("1g.5gb", 0), ("4g.20gb", 0)], "overlaps"),  # a 1g at 0 blocks any 4g
        ([("3g.20gb", 0), ("3g.20gb", 4), ("1g.5gb", 6)], "overlaps"),
        ([("5g.25gb", 0)], "no MIG profile"),
    ],
)
def test_the_fake_refuses_layouts_a_real_gpu_cannot_have(
    layout: list[tuple[str, int]], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        FakeNvml("bad", [(A100_40GB, layout)])


def test_load_picks_the_fake_by_name_and_names_the_machines_when_unknown() -> None:
    assert load("a100-40gb-mps").name == "a100-40gb-mps"
    assert load(None) is pynvml
    with pytest.raises(ValueError, match="a100-40gb-mig, a100-40gb-mps, h100-80gb-mig-mixed"):
        load("v100")


def test_profile_names() -> None:
    assert profile_of("NVIDIA A100-SXM4-40GB MIG 1g.5gb") == "1g.5gb"
    assert profile_of("NVIDIA H100 80GB HBM3 MIG 3g.40gb") == "3g.40gb"


def test_the_real_pynvml_without_a_driver_gives_an_empty_inventory() -> None:
    """This machine has no NVIDIA driver: the real binding's LibraryNotFound path."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - a GPU host
        pynvml.nvmlShutdown()
        pytest.skip("this host has NVML")
    inventory = discover(pynvml)
    assert inventory.gpus == ()
    assert "no NVML" in inventory.problems[0]
