"""The cluster: membership by a supervised Serf agent, leadership by an etcd election.

faasd writes no gossip and no consensus. One module per concept: the Serf RPC codec (pure) and
its asyncio client, the etcd JSON-gateway client, the election's state machine (pure) and the
elector loop, the supervisors of the `serf` and `etcd` child processes, and `node.py`, which
puts them together for the daemon. A daemon without `cluster_addr` uses `SoloCluster`: it is
its own leader at term 1 and starts neither engine.
"""
