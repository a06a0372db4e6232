"""How `faasd profile` shows a profile: a text table and a PNG, from the API's JSON. Pure but
for `draw_png`, which writes the file (matplotlib, from the `sim` extra, imported only there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HEADER = ("BATCH", "VCPU", "VGPU", "LATENCY_MS", "STD_MS", "COST/REQ_$", "COUNT", "RUNS",
          "SOURCE")


def summary(doc: dict[str, Any]) -> str:
    """One line: the function, its version, the profile version and the cold starts."""
    cold = doc.get("cold_start_ms")
    starts = (f"cold start {cold['mean']:.1f} ms mean, {cold['max']:.1f} max ({cold['count']})"
              if cold else "no cold start measured")
    running = " · profiling now" if doc.get("running") else ""
    factors = {kind: f for kind, f in doc.get("slowdown_under_load", {}).items() if f != 1.0}
    slower = (" · configurations not run yet planned at their slowdown under load: " + ", ".join(
        f"{kind.upper()} ×{f:.2f}" for kind, f in factors.items()) if factors else "")
    return (f"{doc['function']} v{doc['version']} · profile version {doc['profile_version']}"
            f" · {starts}{slower}{running}")


def format_table(doc: dict[str, Any]) -> str:
    """The summary line, then one row per configuration (or the hint when there is none)."""
    lines = [summary(doc)]
    rows = [
        (str(r["batch"]), str(r["vcpu"]), str(r["vgpu"]), f"{r['latency_ms']:.3f}",
         f"{r['std_ms']:.3f}" if r["count"] > 1 else "-", f"{r['cost_per_request']:.3g}",
         str(r["count"]), str(r.get("executions", 0)), r["source"])
        for r in doc["configurations"]
    ]
    if not rows:
        lines.append(doc.get("hint", "no profile yet"))
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in (HEADER, *rows)) for i in range(len(HEADER))]
    for row in (HEADER, *rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def point_line(event: dict[str, Any]) -> str:
    """A measured point as one line: `[3/12] batch 2, 1 vCPU: 0.124 ms (± 0.014)`."""
    gpu = f", {event['vgpu']} vGPU" if event.get("vgpu") else ""
    cold = f", cold start {event['cold_start_ms']:.0f} ms" if "cold_start_ms" in event else ""
    return (f"[{event['done']}/{event['total']}] batch {event['batch']}, {event['vcpu']} vCPU"
            f"{gpu}: {event['latency_ms']:.3f} ms (± {event['std_ms']:.3f}){cold}")


def progress_bar(event: dict[str, Any], width: int = 30) -> str:
    """`[#########.....] 3/12 batch 2, 1 vCPU: 0.124 ms` (for a terminal, rewritten in place)."""
    done, total = event["done"], max(1, event["total"])
    filled = round(width * done / total)
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} batch {event['batch']}, "
            f"{event['vcpu']} vCPU: {event['latency_ms']:.3f} ms")


def draw_png(doc: dict[str, Any], path: Path) -> None:
    """Latency and cost per request against the batch size, a line per (vCPU, vGPU); measured
    points filled, fitted ones hollow. ImportError when matplotlib is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in doc["configurations"]:
        series.setdefault((row["vcpu"], row["vgpu"]), []).append(row)
    fig, (lat_ax, cost_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (vcpu, vgpu), rows in sorted(series.items()):
        rows.sort(key=lambda r: r["batch"])
        label = f"{vcpu} vCPU" + (f", {vgpu} vGPU" if vgpu else "")
        batches = [r["batch"] for r in rows]
        for ax, key in ((lat_ax, "latency_ms"), (cost_ax, "cost_per_request")):
            (line,) = ax.plot(batches, [r[key] for r in rows], label=label)
            for r in rows:
                measured = r["source"] == "measured"
                ax.plot(r["batch"], r[key], "o", color=line.get_color(),
                        markerfacecolor=line.get_color() if measured else "white")
    lat_ax.set(xlabel="batch size", ylabel="latency of a batch (ms)", title="latency")
    cost_ax.set(xlabel="batch size", ylabel="$ per request", title="cost per request")
    for ax in (lat_ax, cost_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(summary(doc) + "  (filled: measured, hollow: fitted)", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
