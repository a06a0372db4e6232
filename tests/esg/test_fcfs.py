"""FCFS with dynamic batching: the daemon's default policy and the simplest baseline."""

from __future__ import annotations

from esg.model import Config
from esg.policies import make_policy
from esg.policies.fcfs import FcfsPolicy
from esg.policy import Arrival, Dispatch, FunctionLimits, Timer, WakeUp
from esg.testing import job, node, snapshot

LIMITS = {"f": FunctionLimits(max_batch=3, max_queue_delay_s=0.02, vcpu=2)}


def test_a_partial_batch_waits_up_to_the_queue_delay() -> None:
    # Two jobs of a batch of 3; the oldest arrived at 1.000 s: wait until 1.020 s.
    jobs = [job(0, start_s=1.0), job(1, start_s=1.005)]
    snap = snapshot(now_s=1.005, nodes=[node("n0")], jobs=jobs, limits=LIMITS)
    assert FcfsPolicy().on_event(Arrival(jobs[1]), snap) == [WakeUp(1.02)]


def test_a_full_batch_or_an_expired_delay_leaves_at_the_fixed_configuration() -> None:
    jobs = [job(0, start_s=1.0), job(1, start_s=1.005)]
    late = snapshot(now_s=1.02, nodes=[node("n0")], jobs=jobs, limits=LIMITS)
    assert FcfsPolicy().on_event(Timer(), late) == [
        Dispatch("app", "f", ("j0", "j1"), Config(3, 2), "n0")
    ]
    full = [*jobs, job(2, start_s=1.01), job(3, start_s=1.011)]
    snap = snapshot(now_s=1.011, nodes=[node("n0")], jobs=full, limits=LIMITS)
    # Three leave at once; the fourth waits until 1.011 + 0.02.
    assert FcfsPolicy().on_event(Arrival(full[-1]), snap) == [
        Dispatch("app", "f", ("j0", "j1", "j2"), Config(3, 2), "n0"),
        WakeUp(1.031),
    ]


def test_warm_nodes_first_then_the_most_free_vcpus() -> None:
    config = Config(1, 1)
    nodes = [node("n0", free_vcpu=10), node("n1", free_vcpu=4, warm={("f", config): 1})]
    limits = {"f": FunctionLimits(max_batch=1, vcpu=1)}
    jobs = [job(0), job(1)]
    actions = FcfsPolicy().on_event(Timer(), snapshot(nodes=nodes, jobs=jobs, limits=limits))
    # j0 takes the warm sandbox on n1; j1 goes where most vCPUs are free (n0: 10 > n1: 3).
    assert [(a.node, a.job_ids) for a in actions if isinstance(a, Dispatch)] == [
        ("n1", ("j0",)),
        ("n0", ("j1",)),
    ]


def test_gpu_functions_need_a_gpu_with_the_units_and_instances_are_capped() -> None:
    limits = {"g": FunctionLimits(max_batch=1, vcpu=1, vgpu=3, max_instances=2)}
    nodes = [node("cpu", gpu_units=()), node("gpu", gpu_units=(2, 4))]
    jobs = [job(i, function="g") for i in range(4)]
    actions = FcfsPolicy().on_event(Timer(), snapshot(nodes=nodes, jobs=jobs, limits=limits))
    dispatches = [a for a in actions if isinstance(a, Dispatch)]
    # Only GPU 1 (4 free) holds 3 units, once; the second batch finds no slice and waits,
    # and max_instances = 2 would have stopped a third anyway.
    assert [(d.node, d.gpu) for d in dispatches] == [("gpu", 1)]
    busy = snapshot(nodes=nodes, jobs=jobs, limits=limits, running={"g": 2})
    assert FcfsPolicy().on_event(Timer(), busy) == []


def test_queues_are_served_oldest_head_first_and_nothing_fits_means_nothing_moves() -> None:
    limits = {"a": FunctionLimits(vcpu=4), "b": FunctionLimits(vcpu=4)}
    jobs = [job(1, function="b", start_s=0.5), job(0, function="a", start_s=0.2)]
    nodes = [node("n0", vcpu=4)]
    actions = FcfsPolicy().on_event(
        Timer(), snapshot(now_s=1.0, nodes=nodes, jobs=jobs, limits=limits)
    )
    # One node, room for one 4-vCPU batch: a's job is older, so it goes; b stays queued.
    assert [(a.function, a.job_ids) for a in actions if isinstance(a, Dispatch)] == [("a", ("j0",))]


def test_unknown_functions_use_the_default_limits_and_make_policy_finds_fcfs() -> None:
    policy = make_policy("fcfs")
    assert isinstance(policy, FcfsPolicy)
    actions = policy.on_event(Timer(), snapshot(nodes=[node("n0")], jobs=[job(0)]))
    assert actions == [Dispatch("app", "f", ("j0",), Config(1, 1), "n0")]
