"""Large tensors through shared memory: the frames, the areas, and real sandboxes using them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest

from esg.model import Config
from faasd.errors import SandboxCrashed
from faasd.sandbox import framing, sharedmem
from faasd.sandbox.cgroups import Backend
from faasd.sandbox.items import BodyItem, ItemFailure, TensorItem, TensorResult
from faasd.sandbox.pool import SandboxPool
from faasd.sandbox.sharedmem import SharedArea, SharedPair

from .conftest import MISCHIEF_HANDLER, group_dirs, make_version, reference_output

THRESHOLD = 1024
CAP = 1 << 20


@pytest.fixture
def sides() -> Iterator[tuple[SharedPair, SharedPair]]:
    """(daemon, worker): the two sides of one sandbox's areas, as two mappings of two memfds."""
    request, response = sharedmem.create_fd("request"), sharedmem.create_fd("response")
    daemon = SharedPair(
        out=SharedArea(request, CAP, THRESHOLD),
        into=SharedArea(response, CAP, THRESHOLD),
        copy_in=True,
    )
    worker = SharedPair(
        out=SharedArea(os.dup(response), CAP, THRESHOLD),
        into=SharedArea(os.dup(request), CAP, THRESHOLD),
        copy_in=False,
    )
    yield daemon, worker
    daemon.close()
    worker.close()


def cross(message: object, sender: SharedPair, receiver: SharedPair) -> tuple[object, int]:
    """`message` sent by one side and decoded by the other; also the frame's size in bytes."""
    sender.out.begin_frame()
    buffers = framing.encode(message, sender)
    frame = b"".join(buffers)
    _, header_bytes = framing.parse_prefix(frame[: framing.PREFIX_SIZE])
    return framing.decode(bytearray(frame[framing.PREFIX_SIZE :]), header_bytes, receiver), len(
        frame
    )


def test_large_tensors_leave_the_frame_and_small_ones_stay(
    sides: tuple[SharedPair, SharedPair],
) -> None:
    daemon, worker = sides
    big = np.arange(50_000, dtype=np.float32).reshape(500, 100)
    small = np.arange(10, dtype=np.int64)
    decoded, frame_bytes = cross({"big": big, "small": small, "n": 3}, daemon, worker)

    assert isinstance(decoded, dict)
    np.testing.assert_array_equal(decoded["big"], big)
    np.testing.assert_array_equal(decoded["small"], small)
    assert decoded["n"] == 3 and decoded["big"].dtype == np.float32
    assert small.nbytes < frame_bytes < 1024  # the 200 KB tensor is not in the frame
    assert worker.into.mapped_bytes >= big.nbytes


def test_the_daemon_copies_what_it_reads_and_the_worker_views_it(
    sides: tuple[SharedPair, SharedPair],
) -> None:
    daemon, worker = sides
    first = np.full(10_000, 1.0)
    to_daemon, _ = cross({"y": first}, worker, daemon)
    to_worker, _ = cross({"x": first}, daemon, worker)
    assert isinstance(to_daemon, dict) and isinstance(to_worker, dict)
    kept, viewed = to_daemon["y"], to_worker["x"]

    cross({"y": np.full(10_000, 2.0)}, worker, daemon)  # the next frames overwrite the areas
    cross({"x": np.full(10_000, 2.0)}, daemon, worker)
    assert (kept == 1.0).all()  # the daemon's result outlives the next batch
    assert (viewed == 2.0).all()  # the worker's input was the mapping itself


def test_an_area_grows_and_keeps_what_the_frame_already_placed(
    sides: tuple[SharedPair, SharedPair],
) -> None:
    daemon, worker = sides
    cross({"x": np.ones(2_000, dtype=np.float32)}, daemon, worker)
    before = daemon.out.mapped_bytes
    early = np.arange(4_000, dtype=np.float32)
    late = np.arange(100_000, dtype=np.float64)  # forces growth after `early` was placed
    decoded, frame_bytes = cross([early, late], daemon, worker)

    assert isinstance(decoded, list)
    np.testing.assert_array_equal(decoded[0], early)
    np.testing.assert_array_equal(decoded[1], late)
    assert before < early.nbytes + late.nbytes <= daemon.out.mapped_bytes <= CAP
    assert worker.into.mapped_bytes == daemon.out.mapped_bytes
    assert frame_bytes < 1024


def test_past_the_cap_tensors_ride_in_the_frame(sides: tuple[SharedPair, SharedPair]) -> None:
    daemon, worker = sides
    fits = np.ones(CAP // 8 - 16, dtype=np.float64)
    too_big = np.arange(CAP // 4 + 1, dtype=np.float32)  # alone past the cap
    decoded, frame_bytes = cross({"a": fits, "b": too_big}, daemon, worker)

    assert isinstance(decoded, dict)
    np.testing.assert_array_equal(decoded["a"], fits)
    np.testing.assert_array_equal(decoded["b"], too_big)
    assert too_big.nbytes < frame_bytes < too_big.nbytes + 1024
    assert daemon.out.mapped_bytes <= CAP


def test_a_shared_tensor_without_its_area_is_a_frame_error(
    sides: tuple[SharedPair, SharedPair],
) -> None:
    daemon, _ = sides
    daemon.out.begin_frame()
    frame = b"".join(framing.encode({"x": np.ones(1_000)}, daemon))
    with pytest.raises(framing.FrameError, match="without shared memory"):
        framing.decode_frame(frame)
    with pytest.raises(OSError):  # sealed: neither side can pull the pages from under the other
        os.ftruncate(daemon.out.fd, 0)
    elsewhere = SharedPair(  # an area that does not hold the range the frame names
        out=SharedArea(sharedmem.create_fd("a"), CAP),
        into=SharedArea(sharedmem.create_fd("b"), CAP),
        copy_in=False,
    )
    _, header_bytes = framing.parse_prefix(frame[: framing.PREFIX_SIZE])
    with pytest.raises(framing.FrameError, match="runs past the area"):
        framing.decode(bytearray(frame[framing.PREFIX_SIZE :]), header_bytes, elsewhere)
    elsewhere.close()


def test_a_header_naming_one_range_many_times_is_a_frame_error(
    sides: tuple[SharedPair, SharedPair],
) -> None:
    """A forged answer that names the whole response area 1000 times would make the daemon
    copy it 1000 times (1 GiB here); real frames never name a byte twice."""
    daemon, worker = sides
    worker.out.begin_frame()
    whole = np.ones(CAP // 4, dtype=np.float32)
    place = worker.out.place(whole)
    assert place == 0
    name = msgpack.ExtType(framing.SHARED_TENSOR_EXT,
                           framing._tensor_meta("<f4", whole.shape, place, whole.nbytes))
    header = msgpack.packb([name] * 1000)
    with pytest.raises(framing.FrameError, match="more than its shared area holds"):
        framing.decode(bytearray(header), len(header), daemon)
    assert framing.decode(bytearray(msgpack.packb([name])), len(msgpack.packb([name])),
                          daemon)[0].sum() == CAP // 4  # named once, it is what was placed


def test_the_cap_follows_the_memory_limit() -> None:
    assert sharedmem.cap_for_memory(64) == 16 * 2**20
    assert sharedmem.cap_for_memory(1024) == 256 * 2**20
    assert sharedmem.cap_for_memory(64 * 1024) == sharedmem.MAX_CAP_BYTES


# --- real sandboxes --------------------------------------------------------------------------


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def shared_mappings(pid: int) -> dict[str, int]:
    """The worker's mappings of its memfds: name -> mapped bytes (the largest mapping)."""
    sizes: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "memfd:faasd-" in fields[5]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5].split("memfd:")[1].split()[0]
            sizes[name] = max(sizes.get(name, 0), end - start)
    return sizes


def assert_matches(result: object, x: np.ndarray) -> None:
    assert isinstance(result, TensorResult)
    np.testing.assert_allclose(result.tensors["y"], reference_output(x), rtol=1e-5, atol=1e-5)


async def test_large_tensors_cross_both_ways_and_the_area_grows(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir(), max_batch_size=4)
    x = rows(4_000, 1)  # 256 KB in, 256 KB out
    first = await pool.run(version, Config(1, 1), [TensorItem({"x": x})])
    assert_matches(first.results[0], x)
    maps = shared_mappings(first.sandbox_pid)
    request = next(v for k, v in maps.items() if k.endswith("-request"))
    response = next(v for k, v in maps.items() if k.endswith("-response"))
    assert request >= x.nbytes and response >= x.nbytes

    bigger = rows(40_000, 2)  # 2.5 MB: past what the first call mapped
    second = await pool.run(version, Config(1, 1), [TensorItem({"x": bigger})])
    assert second.sandbox_pid == first.sandbox_pid
    assert_matches(second.results[0], bigger)
    assert min(shared_mappings(second.sandbox_pid).values()) >= bigger.nbytes
    assert_matches(first.results[0], x)  # the first result was copied out, not overwritten


async def test_a_batch_of_mixed_sizes(pool: SandboxPool, function_dir: Callable[..., Path]) -> None:
    version = make_version(function_dir(), max_batch_size=8)
    inputs = [rows(1, 3), rows(3_000, 4), rows(2, 5), rows(1_500, 6)]
    execution = await pool.run(version, Config(4, 1), [TensorItem({"x": x}) for x in inputs])
    for x, result in zip(inputs, execution.results, strict=True):
        assert_matches(result, x)


async def test_past_the_cap_a_sandbox_uses_its_socket(
    pool: SandboxPool, function_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharedmem, "MAX_CAP_BYTES", 256 * 2**10)
    version = make_version(function_dir(), max_batch_size=4)
    small, large = rows(2_000, 7), rows(20_000, 8)  # 128 KB fits the cap, 1.25 MB does not
    for x in (small, large, small):
        execution = await pool.run(version, Config(1, 1), [TensorItem({"x": x})])
        assert_matches(execution.results[0], x)
    assert 0 < max(shared_mappings(execution.sandbox_pid).values()) <= 256 * 2**10


async def test_a_crash_with_the_area_in_use_is_a_502_and_the_next_sandbox_has_its_own(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir(handler=MISCHIEF_HANDLER), max_batch_size=4)
    x = rows(3_000, 9)
    warm = await pool.run(version, Config(2, 1), [TensorItem({"x": x})], postprocess=False)
    memfds_before = count_own_memfds()
    with pytest.raises(SandboxCrashed):
        await pool.run(
            version,
            Config(2, 1),
            [TensorItem({"x": x}), BodyItem(b"crash", "text/plain")],
            postprocess=False,
        )
    # the dead sandbox's areas (memfds, and the descriptors its mappings hold) were closed
    assert memfds_before >= 2 and count_own_memfds() == 0
    again = await pool.run(version, Config(2, 1), [TensorItem({"x": x})], postprocess=False)
    assert again.sandbox_pid != warm.sandbox_pid
    assert_matches(again.results[0], x)
    assert not isinstance(again.results[0], ItemFailure)


def count_own_memfds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:faasd-")
        except OSError:
            continue
    return count


def cgroup_shmem_bytes(pid: int, backend: Backend) -> int:
    """Shared memory charged to `pid`'s memory cgroup (its `memory.stat`)."""
    memory = group_dirs(pid, backend)["unified" if backend is Backend.V2 else "memory"]
    fields = dict(line.split() for line in (memory / "memory.stat").read_text().splitlines())
    return int(fields["shmem"])


async def test_the_response_area_counts_against_the_sandbox_memory_limit(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    if pool.backend is Backend.NONE:
        pytest.skip("needs a memory cgroup (root)")
    version = make_version(function_dir(), max_batch_size=4, memory_mb=512)
    first = await pool.run(version, Config(1, 1), [TensorItem({"x": rows(1, 0)})])
    before = cgroup_shmem_bytes(first.sandbox_pid, pool.backend)
    x = rows(200_000, 10)  # 12.8 MB out, written into the response area by the worker
    second = await pool.run(version, Config(1, 1), [TensorItem({"x": x})])
    assert second.sandbox_pid == first.sandbox_pid
    assert_matches(second.results[0], x)
    after = cgroup_shmem_bytes(second.sandbox_pid, pool.backend)
    assert after - before >= 0.9 * x.nbytes


def own_memfd_bytes() -> dict[str, int]:
    """Memory held by the daemon's memfds (allocated pages, not file size), by name."""
    held: dict[str, int] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("/memfd:faasd-"):
                name = target.split(":", 1)[1].split()[0]
                held[name] = max(held.get(name, 0), os.stat(f"/proc/self/fd/{fd}").st_blocks * 512)
        except OSError:
            continue
    return held


@pytest.mark.slow
async def test_a_large_batch_does_not_pin_its_memory_after_it(
    pool: SandboxPool, function_dir: Callable[..., Path]
) -> None:
    version = make_version(function_dir(), max_batch_size=4)
    x = rows(40 * 2**20 // 64, 11)  # 40 MiB in and out
    execution = await pool.run(version, Config(1, 1), [TensorItem({"x": x})])
    assert_matches(execution.results[0], x)
    assert min(shared_mappings(execution.sandbox_pid).values()) >= x.nbytes  # it went shared
    held = own_memfd_bytes()
    assert len(held) == 2 and max(held.values()) <= sharedmem.KEEP_BYTES
