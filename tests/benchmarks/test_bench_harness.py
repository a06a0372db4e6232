"""The benchmark harness's own parts: V2 encodings, wrk reports, statistics, the tiny model,
the report's verdicts, and the process wrapper. No timing is asserted anywhere."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from faasd_bench import client, models, report, stats, steady, v2, wrk
from faasd_bench.procs import Server, cpu_seconds, descendants_of, free_port, memory_of

WRK_REPORT = """\
Running 10s test @ http://127.0.0.1:8080/v2/models/tiny/infer
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.21ms    1.02ms  31.40ms   90.11%
    Req/Sec     6.13k   312.55     6.70k    71.00%
  Latency Distribution
     50%    5.02ms
     75%    5.48ms
     90%    6.20ms
     99%  850.00us
  61000 requests in 10.00s, 12.34MB read
  Non-2xx or 3xx responses: 1000
  Socket errors: connect 0, read 2, write 0, timeout 3
Requests/sec:   6100.00
Transfer/sec:      1.23MB
"""


def test_binary_request_puts_the_json_header_length_in_its_header() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = v2.binary_request({"x": x})
    split = int(request.headers[v2.HEADER_LENGTH])
    header = json.loads(request.body[:split])
    assert header["inputs"] == [{"name": "x", "shape": [2, 3], "datatype": "FP32",
                                 "parameters": {"binary_data_size": 24}}]
    assert header["parameters"] == {"binary_data_output": True}
    assert request.body[split:] == x.tobytes()


def test_json_request_carries_flat_data() -> None:
    request = v2.json_request({"ids": np.array([[1, 2]], dtype=np.int64)})
    assert json.loads(request.body) == {
        "inputs": [{"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]
    }


def test_json_request_prints_float32_shortest_and_exactly() -> None:
    x = np.array([0.1, 0.25, 1 / 3], dtype=np.float32)
    request = v2.json_request({"x": x})
    assert b'"data":[0.1,0.25,0.33333334]' in request.body
    parsed = np.asarray(json.loads(request.body)["inputs"][0]["data"], dtype=np.float32)
    np.testing.assert_array_equal(parsed, x)


def test_decode_response_reads_binary_and_json_outputs() -> None:
    a = np.array([[1.5, -2.0]], dtype=np.float32)
    header = json.dumps({"outputs": [
        {"name": "a", "shape": [1, 2], "datatype": "FP32",
         "parameters": {"binary_data_size": a.nbytes}},
        {"name": "b", "shape": [2], "datatype": "INT64", "data": [7, 8]},
    ]}).encode()
    got = v2.decode_response(header + a.tobytes(), len(header))
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], np.array([7, 8]))
    with pytest.raises(ValueError, match="not a V2 inference response"):
        v2.decode_response(b'{"error": "no such model"}', None)


def test_an_answer_checks_its_status_and_its_outputs() -> None:
    a = np.array([[1.5, -2.0]], dtype=np.float32)
    body = json.dumps({"outputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32",
                                    "data": a.ravel().tolist()}]}).encode()
    good = client.Answer(200, body, {}, 0.001)
    assert good.ok("f") is good
    good.check_outputs({"a": a}, "f")
    with pytest.raises(RuntimeError, match="f: output 'a' differs"):
        good.check_outputs({"a": a + 1}, "f")
    with pytest.raises(RuntimeError, match="f: output 'b' differs"):
        good.check_outputs({"b": a}, "f")
    failed = client.Answer(503, b'{"error": "busy"}', {}, 0.001)
    with pytest.raises(RuntimeError) as caught:
        failed.ok("f")
    assert str(caught.value) == """f: HTTP 503: b'{"error": "busy"}'"""
    with pytest.raises(RuntimeError, match="HTTP 503"):
        failed.check_outputs({"a": a}, "f")


def test_wrk_report_counts_only_2xx_and_reads_units() -> None:
    result = wrk.parse(WRK_REPORT)
    assert result.requests == 61000
    assert result.non_2xx == 1000
    assert result.calls_per_s == pytest.approx(6000.0)  # (61000 - 1000) / 10 s
    assert result.p50_ms == pytest.approx(5.02)
    assert result.p99_ms == pytest.approx(0.85)  # 850 us
    assert result.socket_errors == 5
    with pytest.raises(ValueError):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused")


def test_wrk_script_posts_the_file_with_its_headers(tmp_path: Path) -> None:
    script = wrk.lua_script(tmp_path / "body", {"Content-Type": "application/json"})
    assert 'wrk.method = "POST"' in script
    assert str(tmp_path / "body") in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script


def test_summary_and_overhead_by_hand() -> None:
    # Percentiles of 1..101 ms: p50 = 51, p99 = 100 (linear interpolation at rank 99.0).
    served = [i / 1e3 for i in range(1, 102)]
    baseline = [0.5 / 1e3] * 101
    latency = stats.summarize(served)
    assert (latency.n, latency.p50_ms, latency.p99_ms, latency.max_ms) == (101, 51, 100, 101)
    gap = stats.overhead(served, baseline)
    assert gap.p50_ms == pytest.approx(50.5)
    assert gap.p99_ms == pytest.approx(99.5)
    assert gap.paired_p50_ms == pytest.approx(50.5)
    with pytest.raises(ValueError):
        stats.overhead(served, baseline[:-1])
    with pytest.raises(ValueError):
        stats.summarize([])


def test_tiny_model_is_relu_of_a_matmul(tmp_path: Path) -> None:
    path = models.build_tiny(tmp_path / "tiny.onnx", seed=3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("x", ["N", 16])]
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    weights = np.random.default_rng(3).standard_normal((16, 16)).astype(np.float32)
    np.testing.assert_allclose(y, np.maximum(x @ weights, 0), rtol=1e-5, atol=1e-5)


def test_wide_model_takes_squeezenets_input_and_averages_each_channel(tmp_path: Path) -> None:
    path = models.build_wide(tmp_path / "wide.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("x", ["N", 3, 224, 224])]
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)), rtol=1e-5)


def test_long_model_chains_one_orthogonal_matrix(tmp_path: Path) -> None:
    path = models.build_long(tmp_path / "long.onnx", chain=5, width=8, seed=2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("x", ["N", 8])]
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    weights, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((8, 8)))
    expected = x.astype(np.float64) @ np.linalg.matrix_power(weights, 5)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    # orthogonal: each row keeps its length however long the chain
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-4)


def test_bench_function_writes_a_faasd_yaml(tmp_path: Path) -> None:
    import yaml

    model = models.build_tiny(tmp_path / "m.onnx")
    function = models.BenchFunction("tiny", model, max_batch_size=32, max_queue_delay_ms=1,
                                    keep_alive_s=2)
    folder = function.write(tmp_path / "functions")
    settings = yaml.safe_load((folder / "faasd.yaml").read_text())
    assert settings["batching"] == {"max_batch_size": 32, "max_queue_delay_ms": 1}
    assert settings["scale"]["keep_alive_s"] == 2
    assert (folder / "model.onnx").read_bytes() == model.read_bytes()


def _results(overhead_p50_ms: float, calls_per_s: int) -> dict[str, object]:
    return {
        "machine": {"cpu": "AMD EPYC", "cores": 2, "memory_gib": 23.0, "python": "3.11",
                    "onnxruntime": "1.32.0", "aiohttp": "3.14.5", "mlserver": "1.7.1",
                    "wrk": "4.1.0"},
        "warm_overhead": {"overhead_binary": {"p50_ms": overhead_p50_ms, "p99_ms": 2.0},
                          "overhead_json": {"p50_ms": 9.0, "p99_ms": 12.0},
                          "request_bytes": {"binary": 602_264, "json": 737_770}},
        "tiny_throughput": {"connections": 32, "loaded": {"faasd": {
            "median_calls_per_s": calls_per_s, "p50_ms": 5.0, "p99_ms": 9.0,
            "server_cpu_ms_per_call": 0.25}}},
        "errors": {"cold_start": "RuntimeError: boom"},
    }


def test_report_says_which_targets_are_met() -> None:
    met = report.render(_results(0.4, 6000))
    assert "| 0.40 ms | meets |" in met
    assert "6,000" in met
    assert "cold start | – | failed: RuntimeError: boom | **misses** |" in met
    missed = report.render(_results(1.7, 4000))
    assert "| 1.70 ms | **misses** |" in missed
    assert "4,000 (p50 5.0 ms, p99 9.0 ms; 0.25 CPU ms/call) | **misses** |" in missed


def test_report_judges_the_steady_series_when_there_is_one() -> None:
    results = _results(1.4, 6000)
    warm = results["warm_overhead"]
    assert isinstance(warm, dict)
    warm["steady"] = {"block": 20, "overhead_binary": {"p50_ms": 0.9, "p99_ms": 1.8}}
    text = report.render(results)
    assert "batch 1; blocks of 20) | ≤ 1 ms | 0.90 ms | meets |" in text
    assert "interleaved per call with the other series | – | 1.40 / 2.00 ms | – |" in text
    assert "http.client" not in text and "wrk -t1" not in text  # older results lack both
    warm["steady"]["overhead_binary_http_client"] = {"p50_ms": 1.15, "p99_ms": 2.1}
    warm["steady"]["overhead_floor"] = {"p50_ms": 0.45, "p99_ms": 0.9}
    warm["steady"]["faasd_over_floor_p50_ms"] = 0.45
    warm["wrk_one_connection"] = {"wrk": {"p50_ms": 3.9}, "inproc_p50_ms": 3.1,
                                  "overhead_p50_ms": 0.8}
    text = report.render(results)
    assert "http.client (its own cost included) | – | 1.15 / 2.10 ms | – |" in text
    assert "p50 / p99 | – | 0.45 / 0.90 ms; faasd adds 0.45 ms over it | – |" in text
    assert "in-process p50 | – | 3.90 − 3.10 = 0.80 ms | – |" in text
    warm["wrk_one_connection"] = {"error": "FileNotFoundError: wrk"}
    assert "wrk -t1 -c1 | – | failed: FileNotFoundError: wrk | – |" in report.render(results)


@pytest.mark.slow
def test_server_waits_measures_and_stops_its_process_tree(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with Server("http.server", argv, tmp_path / "server.log", cwd=tmp_path) as server:
        server.wait_http(f"http://127.0.0.1:{port}/", timeout_s=30)
        memory = memory_of(server.pid)
        assert memory.rss_mb > memory.uss_mb > 0
        assert descendants_of(server.pid) == []
        assert cpu_seconds(server.pid) >= 0.0
    assert server.process.poll() is not None


def test_waiting_on_a_server_that_exits_fails_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('bad config'); raise SystemExit(3)"]
    with Server("broken", argv, tmp_path / "broken.log") as server, \
            pytest.raises(RuntimeError, match=r"exited \(3\)[\s\S]*bad config"):
        server.wait_http(f"http://127.0.0.1:{free_port()}/", timeout_s=30)


def test_metrics_histogram_mean_between_two_scrapes() -> None:
    from faasd_bench import prom

    before = prom.parse(
        '# HELP x\nfaasd_function_compute_duration_seconds_sum{function_name="tiny",'
        'device="cpu"} 1.0\nfaasd_function_compute_duration_seconds_count{function_name="tiny",'
        'device="cpu"} 10.0\n'
    )
    after = prom.parse(
        'faasd_function_compute_duration_seconds_sum{function_name="tiny",device="cpu"} 1.5\n'
        'faasd_function_compute_duration_seconds_count{function_name="tiny",device="cpu"} 20.0\n'
        'faasd_function_compute_duration_seconds_count{function_name="other",device="cpu"} 9\n'
    )
    # 10 more batches took 0.5 s more: 50 ms each; the other function is not counted.
    count, mean_s = prom.histogram_mean(
        before, after, "faasd_function_compute_duration_seconds", {"function_name": "tiny"}
    )
    assert count == 10
    assert mean_s == pytest.approx(0.05)
    assert prom.histogram_mean(before, before, "faasd_function_compute_duration_seconds",
                               {"function_name": "tiny"}) == (0, 0.0)


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers a POST with the body's length and digest, framed the way the path asks."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # the name http.server calls
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                             "type": self.headers["Content-Type"]}).encode()
        self.send_response(200)
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (answer[:5], answer[5:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(answer)))
        if self.path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def echo_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("client_class", [client.Client, client.StdlibClient])
def test_clients_send_the_whole_body_and_read_every_framing(
    echo_server: int, client_class: type[client.Client] | type[client.StdlibClient]
) -> None:
    body = np.random.default_rng(1).bytes(700_000)  # more than one send and one receive
    request = v2.Request(body, {"Content-Type": "application/octet-stream"})
    expected = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                "type": "application/octet-stream"}
    poster = client_class("127.0.0.1", echo_server)
    for path in ("/length", "/chunked", "/close", "/length"):  # /close: the next call reconnects
        answer = poster.post(path, request)
        assert answer.status == 200
        assert json.loads(answer.body) == expected
        assert answer.elapsed_s > 0
    poster.close()


def test_the_client_reconnects_when_the_server_let_an_idle_connection_go() -> None:
    """As uvicorn does after 5 s of keep-alive: close the connection between two calls."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        poster = client.Client("127.0.0.1", listener.getsockname()[1])

        def serve_one_call_then_hang_up() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(answer)

        for _ in range(2):  # the second call finds the first connection closed
            server = threading.Thread(target=serve_one_call_then_hang_up)
            server.start()
            reply = poster.post("/", v2.Request(b"x", {}))
            server.join()
            assert (reply.status, reply.body) == (200, b"ok")
            time.sleep(0.05)  # the server's FIN reaches the client's socket
        poster.close()


def test_response_heads_are_parsed_and_garbage_is_refused() -> None:
    status, headers = client.parse_head(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\nX-Call-Id:  abc ")
    assert status == 404
    assert headers == {"content-length": "12", "x-call-id": "abc"}
    with pytest.raises(ValueError, match="not an HTTP"):
        client.parse_head(b"SSH-2.0-OpenSSH_9.2")
    with pytest.raises(ValueError, match="malformed"):
        client.parse_head(b"HTTP/1.1 200 OK\r\nno colon here")
    head = client.request_head("h:1", "/p", {"A": "b"}, 3)
    assert head == b"POST /p HTTP/1.1\r\nHost: h:1\r\nContent-Length: 3\r\nA: b\r\n\r\n"


def test_steady_rounds_alternate_blocks_and_rotate_the_series() -> None:
    log: list[str] = []

    def series(name: str) -> Callable[[], float]:
        def call() -> float:
            log.append(name)
            return float(len(log))
        return call

    inproc, (a, b) = steady.steady_rounds(lambda: log.append("run"), [series("a"), series("b")],
                                          total=4, block=2)
    assert log == ["run", "run", "a", "a", "b", "b",   # round 0: a first
                   "run", "run", "b", "b", "a", "a"]   # round 1: b first
    assert len(inproc) == 4 and all(t >= 0 for t in inproc)
    assert a == [3.0, 4.0, 11.0, 12.0] and b == [5.0, 6.0, 9.0, 10.0]


def test_ab_daemons_gives_b_its_env_and_its_checkout(tmp_path: Path) -> None:
    import ab_daemons

    env, cwd = ab_daemons.daemon_env(["FAASD_LOG_LEVEL=debug", "GLIBC_TUNABLES=a=b"], None)
    assert env == {"FAASD_LOG_LEVEL": "debug", "GLIBC_TUNABLES": "a=b"} and cwd is None
    checkout = tmp_path / "base"
    (checkout / "faasd").mkdir(parents=True)
    (checkout / "faasd" / "__init__.py").write_text("")
    env, cwd = ab_daemons.daemon_env([], checkout)
    # the daemon imports the checkout first, and its fork server (`python -m`) starts there
    assert env == {"PYTHONPATH": str(checkout.resolve())} and cwd == checkout.resolve()
    with pytest.raises(ValueError, match="KEY=VALUE"):
        ab_daemons.daemon_env(["FAASD_LOG_LEVEL"], None)
    with pytest.raises(ValueError, match="no faasd/ package"):
        ab_daemons.daemon_env([], tmp_path)


def test_ab_daemons_averages_the_two_halves() -> None:
    import ab_daemons

    def half(a: float, b: float, cpu_a: float, cpu_b: float) -> dict[str, Any]:
        return {
            "A": {"overhead": {"p50_ms": a}},
            "B": {"overhead": {"p50_ms": b}},
            "b_minus_a": {"p50_ms": b - a, "daemon_cpu_ms_per_call": cpu_b - cpu_a},
        }

    # the daemon started second is 0.1 ms faster in each half: the mean cancels it
    report = ab_daemons.combine([half(1.2, 1.1, 0.8, 0.8), half(1.0, 1.1, 0.9, 0.7)])
    assert report["A_overhead_p50_ms"] == 1.1 and report["B_overhead_p50_ms"] == 1.1
    assert report["b_minus_a"] == {"p50_ms": 0.0, "daemon_cpu_ms_per_call": -0.1}
    assert report["b_minus_a_p50_ms_by_half"] == pytest.approx([-0.1, 0.1])
