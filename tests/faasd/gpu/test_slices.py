"""Slice accounting: MIG by instances, MPS / time-slicing by shares, never over-committed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esg.policy import GpuView
from faasd.gpu.discovery import discover
from faasd.gpu.fake import A100_40GB, H100_80GB, FakeNvml, machine
from faasd.gpu.slices import Slice, SliceTable, resolve_modes


def table(name: str, mode: str = "auto") -> SliceTable:
    slots, _ = resolve_modes(discover(machine(name)), mode)
    return SliceTable(slots)


def test_mig_gives_only_the_sizes_of_free_instances() -> None:
    t = table("h100-80gb-mig-mixed")  # 3g + 2g + 1g + 1g
    assert t.sizes() == {1, 2, 3}
    assert t.acquire("a", 4) is None  # 7 units free, but no 4g instance exists
    two = t.acquire("a", 2)
    assert two is not None and two.profile == "2g.20gb" and two.memory_mb == 20480
    assert t.acquire("b", 2) is None  # the only 2g is taken: two free 1g are no 2g
    assert t.free_units(0) == 5
    one = t.acquire("b", 1)
    other = t.acquire("c", 1)
    assert one is not None and other is not None and one.device_uuid != other.device_uuid
    assert t.acquire("d", 1) is None
    assert t.views() == (GpuView(index=0, free_units=3, total_units=7, mode="mig"),)
    assert t.release("a") == two and t.acquire("d", 2) is not None


def test_mps_shares_best_fit_and_memory_by_share() -> None:
    t = table("a100-40gb-mps")
    s = t.acquire("a", 3)
    assert s is not None and s.mode == "mps" and s.device_uuid == s.gpu_uuid
    assert s.memory_mb == 40960 * 3 // 7  # 17554
    assert t.acquire("b", 5) is None and t.acquire("b", 4) is not None
    assert t.free_units(0) == 0
    assert t.views()[0].mode == "mps"


def test_modes_choose_and_leave_out_gpus_with_reasons() -> None:
    inventory = discover(machine("a100-40gb-mps"))
    slots, skipped = resolve_modes(inventory, "mig")
    assert slots == [] and "needs a GPU in MIG mode" in skipped[0]
    slots, _ = resolve_modes(inventory, "timeslice")
    assert [g.mode for g in slots] == ["timeslice"]
    slots, skipped = resolve_modes(discover(machine("a100-40gb-mig")), "mps")
    assert slots == [] and "not in MIG mode" in skipped[0]
    slots, skipped = resolve_modes(discover(machine("a100-40gb-mig")), "off")
    assert slots == [] and "off" in skipped[0]
    no_mps = discover(FakeNvml("plain", [(A100_40GB, None)]))
    assert [g.mode for g in resolve_modes(no_mps, "auto")[0]] == ["timeslice"]
    with pytest.raises(ValueError, match="auto, mig, mps, timeslice, off"):
        resolve_modes(no_mps, "vgpu")


def test_a_withdrawn_gpu_gives_nothing_and_names_its_holders() -> None:
    t = table("a100-40gb-mig")
    assert t.acquire("a", 1) is not None
    assert t.withdraw(0) == ["a"]
    assert t.acquire("b", 1) is None and t.sizes() == frozenset()
    assert t.views() == (GpuView(index=0, free_units=0, total_units=0, mode="mig"),)
    assert t.describe()[0]["healthy"] is False


def test_bad_requests_are_errors() -> None:
    t = table("a100-40gb-mps")
    with pytest.raises(ValueError, match=r"1\.\.7"):
        t.acquire("a", 8)
    t.acquire("a", 1)
    with pytest.raises(ValueError, match="already holds"):
        t.acquire("a", 1)
    assert t.release("nobody") is None


def test_describe_marks_the_instances_in_use() -> None:
    t = table("h100-80gb-mig-mixed")
    t.acquire("a", 3)
    (gpu,) = t.describe()
    assert (gpu["total_units"], gpu["free_units"], gpu["mode"]) == (7, 4, "mig")
    assert [(i["profile"], i["in_use"]) for i in gpu["instances"]] == [
        ("3g.40gb", True), ("2g.20gb", False), ("1g.10gb", False), ("1g.10gb", False),
    ]


# A step: acquire `units` for owner k, or release owner k.
steps = st.lists(
    st.tuples(st.booleans(), st.integers(0, 9), st.integers(1, 7)), min_size=1, max_size=60
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["a100-40gb-mig", "h100-80gb-mig-mixed", "a100-40gb-mps"]), steps)
def test_accounting_never_over_commits(name: str, ops: list[tuple[bool, int, int]]) -> None:
    t = table(name)
    (gpu,) = t.gpus
    held: dict[str, int] = {}
    for take, k, units in ops:
        owner = f"s{k}"
        if take and owner not in held:
            got = t.acquire(owner, units)
            free_before = gpu.total_units - sum(held.values())
            if got is not None:
                assert got.units == units
                held[owner] = units
            elif gpu.mode != "mig":  # a share is refused only when it does not fit
                assert units > free_before
        elif not take:
            released = t.release(owner)
            assert (released is None) == (owner not in held)
            held.pop(owner, None)
        slices = t.held()
        assert sum(s.units for s in slices.values()) <= gpu.total_units
        assert t.free_units(0) == gpu.total_units - sum(held.values()) >= 0
        if gpu.mode == "mig":  # one holder per instance, of exactly its size
            devices = [s.device_uuid for s in slices.values()]
            assert len(devices) == len(set(devices))
            sizes = {i.uuid: i.units for i in gpu.instances}
            assert all(sizes[s.device_uuid] == s.units for s in slices.values())
    for owner in list(held):
        t.release(owner)
    assert t.free_units(0) == gpu.total_units


@settings(max_examples=150, deadline=None)
@given(steps)
def test_two_gpus_of_two_modes_are_never_over_committed(ops: list[tuple[bool, int, int]]) -> None:
    """An H100 cut 3g + 2g + 1g + 1g beside an A100 shared by MPS: each GPU on its own
    books, MIG slices exact instances, MPS shares on the A100 only."""
    fake = FakeNvml("mixed", [
        (H100_80GB, [("3g.40gb", 4), ("2g.20gb", 0), ("1g.10gb", 2), ("1g.10gb", 3)]),
        (A100_40GB, None),
    ], mps_server=True)
    slots, _ = resolve_modes(discover(fake), "auto")
    t = SliceTable(slots)
    assert [g.mode for g in t.gpus] == ["mig", "mps"]
    held: dict[str, Slice] = {}
    for take, k, units in ops:
        owner = f"s{k}"
        if take and owner not in held:
            free = [t.free_units(0), t.free_units(1)]
            got = t.acquire(owner, units)
            if got is None:
                assert units > free[1]  # the MPS GPU had no room, and no free instance fit
            else:
                held[owner] = got
        elif not take and owner in held:
            assert t.release(owner) == held.pop(owner)
        for index, gpu in enumerate(t.gpus):
            mine = [s for s in held.values() if s.gpu_index == index]
            assert all(s.mode == gpu.mode for s in mine)
            assert t.free_units(index) == gpu.total_units - sum(s.units for s in mine) >= 0
        mig = [s.device_uuid for s in held.values() if s.mode == "mig"]
        assert len(mig) == len(set(mig))


def test_device_memory_picks_the_instance_and_limits_the_share() -> None:
    slots, _ = resolve_modes(discover(FakeNvml("a100", [
        (A100_40GB, [("1g.5gb", 0), ("1g.10gb", 2), ("2g.10gb", 4)]),
    ])), "auto")
    t = SliceTable(slots)
    big = t.acquire("a", 1, memory_mb=8000)
    assert big is not None and big.profile == "1g.10gb"  # only it has 8000 MB
    assert t.acquire("b", 1, memory_mb=8000) is None  # busy: the 1g.5gb is too small
    small = t.acquire("b", 1)
    assert small is not None and small.profile == "1g.5gb"
    assert t.can_ever(1, 9856) and not t.can_ever(1, 9857) and not t.can_ever(3)
    t.release("a")
    t.release("b")
    least = t.acquire("c", 1)
    assert least is not None and least.profile == "1g.5gb"  # the least memory that suffices

    shares = table("a100-40gb-mps")
    pinned = shares.acquire("a", 2, memory_mb=12000)
    assert pinned is not None and pinned.memory_mb == 12000
    assert shares.acquire("b", 1, memory_mb=50000) is None and not shares.can_ever(1, 50000)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["mig", "mps"]), steps)
def test_the_slice_lands_on_the_gpu_esg_would_pick(
    mode: str, ops: list[tuple[bool, int, int]]
) -> None:
    """Two GPUs cut alike (7 x 1g, or two MPS GPUs): the table's GPU is esg's best fit, so a
    policy's plan and the binding agree (with mixed MIG sizes esg cannot see instances)."""
    from esg.dispatch import gpu_for
    from esg.policy import NodeView

    layout = [("1g.5gb", s) for s in range(7)] if mode == "mig" else None
    fake = FakeNvml("two", [(A100_40GB, layout), (A100_40GB, layout)], mps_server=True)
    t = SliceTable(resolve_modes(discover(fake), "auto")[0])
    for take, k, units in ops:
        owner = f"s{k}"
        units = 1 if mode == "mig" else units
        if take and owner not in t.held():
            planned = gpu_for(NodeView("n", 1, 1, gpus=t.views()), units)
            got = t.acquire(owner, units)
            assert (got.gpu_index if got is not None else None) == planned
        elif not take:
            t.release(owner)
