"""Results (the dict run_all.py writes as JSON) -> a Markdown summary against the targets.

Pure. A phase that failed or was skipped shows as such; nothing is invented for it.
"""

from __future__ import annotations

from typing import Any

#: The issue's targets on a 2-core machine.
TARGET_OVERHEAD_P50_MS = 1.0
TARGET_OVERHEAD_P99_MS = 3.0
TARGET_TINY_CALLS_PER_S = 5000.0
TARGET_COLD_MS = 250.0
TARGET_IDLE_RSS_MB = 100.0


def _verdict(ok: bool) -> str:
    return "meets" if ok else "**misses**"


def _row(measure: str, target: str, measured: str, ok: bool | None) -> str:
    return f"| {measure} | {target} | {measured} | {'–' if ok is None else _verdict(ok)} |"


def _warm_rows(warm: dict[str, Any]) -> list[str]:
    # The target is read on the steady series (back-to-back blocks); older results have none.
    steady = warm.get("steady")
    o = steady["overhead_binary"] if steady else warm["overhead_binary"]
    how = f"blocks of {steady['block']}" if steady else "interleaved per call"
    rows = [
        _row(f"warm overhead p50, binary V2 (squeezenet, batch 1; {how})",
             f"≤ {TARGET_OVERHEAD_P50_MS:g} ms",
             f"{o['p50_ms']:.2f} ms", o["p50_ms"] <= TARGET_OVERHEAD_P50_MS),
        _row("warm overhead p99, binary V2", f"≤ {TARGET_OVERHEAD_P99_MS:g} ms",
             f"{o['p99_ms']:.2f} ms", o["p99_ms"] <= TARGET_OVERHEAD_P99_MS),
    ]
    if steady and "overhead_floor" in steady:
        f = steady["overhead_floor"]
        rows.append(_row("the floor in the same minutes: aiohttp + uvloop running the model "
                         "inline (raw tensor in and out), p50 / p99", "–",
                         f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f} ms; faasd adds "
                         f"{steady['faasd_over_floor_p50_ms']:.2f} ms over it", None))
    if steady and "overhead_binary_http_client" in steady:
        h = steady["overhead_binary_http_client"]
        rows.append(_row("the same, client through Python's http.client (its own cost included)",
                         "–", f"{h['p50_ms']:.2f} / {h['p99_ms']:.2f} ms", None))
    check = warm.get("wrk_one_connection", {})
    if "overhead_p50_ms" in check:
        rows.append(_row("the same call from wrk -t1 -c1: p50 latency − in-process p50", "–",
                         f"{check['wrk']['p50_ms']:.2f} − {check['inproc_p50_ms']:.2f} = "
                         f"{check['overhead_p50_ms']:.2f} ms", None))
    elif "error" in check:
        rows.append(_row("the same call from wrk -t1 -c1", "–", f"failed: {check['error']}",
                         None))
    if steady:
        mixed = warm["overhead_binary"]
        rows.append(_row("warm overhead p50 / p99, binary, interleaved per call with the "
                         "other series", "–", f"{mixed['p50_ms']:.2f} / {mixed['p99_ms']:.2f} ms",
                         None))
    if "cpu_ms_per_call" in warm:
        cpu = warm["cpu_ms_per_call"]
        rows.append(_row("CPU per binary call: daemon / daemon + sandboxes / in-process run", "–",
                         f"{cpu['daemon']:.2f} / {cpu['daemon_and_sandboxes']:.2f} / "
                         f"{cpu['inproc']:.2f} ms", None))
    j = warm["overhead_json"]
    rows.append(_row(f"warm overhead p50 / p99, V2 JSON ({warm['request_bytes']['json']:,} B)",
                     "–", f"{j['p50_ms']:.2f} / {j['p99_ms']:.2f} ms", None))
    if "overhead_binary_batching_on" in warm:
        b = warm["overhead_binary_batching_on"]
        rows.append(_row("warm overhead p50 / p99, binary, batching on (max 8, 2 ms)", "–",
                         f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f} ms", None))
    if "peer_json" in warm:
        rows.append(_row("squeezenet V2 JSON p50, MLServer ÷ faasd", "> 1 is faasd faster",
                         f"{warm['peer_over_faasd_json_p50']:.2f}×", None))
    return rows


def _load_rows(load: dict[str, Any]) -> list[str]:
    ours = load["loaded"]["faasd"]
    rows = [_row(f"tiny model, {load['connections']} connections, calls/s (2xx)",
                 f"≥ {TARGET_TINY_CALLS_PER_S:,.0f}",
                 f"{ours['median_calls_per_s']:,} (p50 {ours['p50_ms']:.1f} ms, "
                 f"p99 {ours['p99_ms']:.1f} ms; {ours['server_cpu_ms_per_call']:.2f} CPU "
                 "ms/call)",
                 ours["median_calls_per_s"] >= TARGET_TINY_CALLS_PER_S)]
    if "mlserver" in load["loaded"]:
        theirs = load["loaded"]["mlserver"]
        rows.append(_row("tiny model calls/s, faasd ÷ MLServer", "> 1 is faasd faster",
                         f"{load['faasd_over_peer_calls_per_s']:.2f}× (MLServer "
                         f"{theirs['median_calls_per_s']:,}/s, "
                         f"{theirs['server_cpu_ms_per_call']:.2f} CPU ms/call)", None))
    return rows


def _cold_rows(cold: dict[str, Any]) -> list[str]:
    if "cold" not in cold:
        return [_row("cold start, squeezenet", f"≤ {TARGET_COLD_MS:g} ms",
                     "no answer said X-Faasd-Cold-Start: true", False)]
    c = cold["cold"]
    return [_row("cold start, squeezenet (idle → first answer), median", f"≤ {TARGET_COLD_MS:g} ms",
                 f"{c['p50_ms']:.0f} ms (max {c['max_ms']:.0f}, n={c['n']}; "
                 f"warm {cold['warm']['p50_ms']:.1f} ms)", c["p50_ms"] <= TARGET_COLD_MS)]


def _memory_rows(memory: dict[str, Any]) -> list[str]:
    idle = memory["idle"]
    rss = idle["daemon"]["rss_mb"]
    rows = [_row("daemon RSS when idle", f"≤ {TARGET_IDLE_RSS_MB:g} MB", f"{rss:.0f} MB",
                 rss <= TARGET_IDLE_RSS_MB)]
    for child in idle["children"]:
        rows.append(_row("its child (fork server) RSS / USS when idle", "–",
                         f"{child['rss_mb']:.0f} / {child['uss_mb']:.0f} MB", None))
    for name in ("squeezenet", "tiny"):
        boxes = memory[f"warm_{name}"]["sandboxes"]
        if boxes:
            uss = sum(b["uss_mb"] for b in boxes)
            rss_box = sum(b["rss_mb"] for b in boxes)
            rows.append(_row(f"one warm {name} sandbox adds (USS; its RSS)", "–",
                             f"{uss:.0f} MB ({rss_box:.0f} MB)", None))
    if "peer_after_calls" in memory:
        ours, theirs = memory["faasd_after_calls"], memory["peer_after_calls"]
        rows.append(_row("all processes after the same calls, PSS: faasd vs MLServer", "–",
                         f"{ours['pss_mb']:.0f} MB ({ours['processes']} processes) vs "
                         f"{theirs['pss_mb']:.0f} MB ({theirs['processes']})", None))
    return rows


_SECTIONS = (
    ("daemon", None), ("peer", None), ("memory", _memory_rows), ("warm_overhead", _warm_rows),
    ("cold_start", _cold_rows), ("tiny_throughput", _load_rows),
)


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    load = results.get("load_average", {})
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB "
        f"(1-min load average {load.get('start', '?')} before, {load.get('end', '?')} after); "
        f"Python {machine['python']}, onnxruntime {machine['onnxruntime']}, "
        f"aiohttp {machine['aiohttp']}, MLServer {machine['mlserver']}, wrk {machine['wrk']}.",
        "",
        "| measure | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    for phase, rows in _SECTIONS:
        if phase in results.get("errors", {}):
            first_line = results["errors"][phase].splitlines()[0][:160]
            lines.append(_row(phase.replace("_", " "), "–", f"failed: {first_line}", False))
        elif phase in results and rows is not None:
            lines += rows(results[phase])
    return "\n".join(lines)
