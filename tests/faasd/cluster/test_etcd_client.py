"""The etcd client's failure answers, against endpoints that are not etcd (no etcd needed)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from faasd.cluster.errors import EtcdError
from faasd.cluster.etcd_client import EtcdClient, b64, unb64


async def test_nothing_listening_on_any_endpoint_says_so() -> None:
    client = EtcdClient(["http://127.0.0.1:1", "http://127.0.0.1:2/"])
    try:
        with pytest.raises(EtcdError, match=r"no etcd endpoint answered \(http://127.0.0.1:1/v3"
                                            r"/lease/grant: .*http://127.0.0.1:2/v3/lease"):
            await client.lease_grant(2)
        assert not await client.health()
    finally:
        await client.close()


async def test_a_server_that_is_not_etcd_is_named() -> None:
    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="404 page not found")

    async def refusal(request: web.Request) -> web.Response:
        return web.json_response({"error": "etcdserver: requested lease not found",
                                  "code": 5, "message": "etcdserver: requested lease not "
                                  "found"}, status=404)

    app = web.Application()
    app.router.add_post("/v3/lease/grant", not_found)
    app.router.add_post("/v3/lease/keepalive", refusal)
    async with TestServer(app, host="127.0.0.1") as server:
        client = EtcdClient([str(server.make_url("/"))])
        try:
            with pytest.raises(EtcdError, match="is this an etcd client URL"):
                await client.lease_grant(2)
            with pytest.raises(EtcdError, match="requested lease not found") as caught:
                await client.lease_keepalive("1")
            assert caught.value.extra["status_code"] == 404
        finally:
            await client.close()


def test_keys_and_values_travel_as_base64() -> None:
    assert b64("faasd/leader") == "ZmFhc2QvbGVhZGVy"
    assert unb64(b64("node-127.0.0.2")) == "node-127.0.0.2"


def test_endpoints_are_kept_in_order_with_the_one_in_use_first() -> None:
    client = EtcdClient(["http://a:2379/", "http://b:2379"])
    client.set_endpoints(["http://c:2379", "http://a:2379", "http://c:2379"])
    assert client.endpoints == ["http://a:2379", "http://c:2379"]
    client.set_endpoints([])  # no voter tagged right now: keep what we had
    assert client.endpoints == ["http://a:2379", "http://c:2379"]
    with pytest.raises(ValueError, match="at least one endpoint"):
        EtcdClient([])


async def test_a_renewal_and_a_quorum_read_carry_their_raft_terms() -> None:
    """The elector counts a renewal only when a linearizable read agrees on the raft term."""
    async def keepalive(request: web.Request) -> web.Response:
        return web.json_response({"result": {"ID": "7", "TTL": "2",
                                             "header": {"raft_term": "5"}}})

    async def read(request: web.Request) -> web.Response:
        body = await request.json()
        assert unb64(body["key"]) == "faasd/leader" and "serializable" not in body
        return web.json_response({"header": {"raft_term": "6"}, "count": "0"})

    app = web.Application()
    app.router.add_post("/v3/lease/keepalive", keepalive)
    app.router.add_post("/v3/kv/range", read)
    async with TestServer(app, host="127.0.0.1") as server:
        client = EtcdClient([str(server.make_url("/"))])
        try:
            renewal = await client.lease_keepalive("7")
            assert (renewal.ttl_s, renewal.raft_term) == (2, 5)
            assert await client.quorum_term("faasd/leader") == 6
        finally:
            await client.close()
