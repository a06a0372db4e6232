"""PNG figures of a grid: SLO hit rate and normalised cost per setting (the paper's main
figure), and end-to-end latency CDFs for the settings the paper names. matplotlib, Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from esg.sim.metrics import RunMetrics
from esg.sim.report import NAMED_CELLS, cells, table_rows


def write_figures(results: Sequence[RunMetrics], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(results)
    policies = list(dict.fromkeys(str(r["policy"]) for r in rows))
    grid = cells()
    labels = [f"{slo}\n{load}" for load, slo in grid]
    written = []
    for column, title, name in (
        ("slo_hit_rate", "SLO hit rate", "slo_hit_rate.png"),
        ("cost_norm", "cost per request, normalised to ESG", "cost_norm.png"),
    ):
        fig, ax = plt.subplots(figsize=(12, 3.6))
        width = 0.8 / max(1, len(policies))
        for i, policy in enumerate(policies):
            values = []
            for load, slo in grid:
                match = [r[column] for r in rows
                         if r["policy"] == policy and r["workload"] == load and r["slo"] == slo]
                values.append(float(match[0]) if match else float("nan"))  # type: ignore[arg-type]
            xs = [j + (i - (len(policies) - 1) / 2) * width for j in range(len(grid))]
            ax.bar(xs, values, width, label=policy)
        ax.set_xticks(range(len(grid)), labels, fontsize=8)
        ax.set_ylabel(title)
        if column == "cost_norm":
            ax.set_yscale("log")
        ax.legend(ncol=5, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1.25))
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(1, len(NAMED_CELLS), figsize=(12, 3.4), sharey=True)
    for ax, (load, slo) in zip(axes, NAMED_CELLS, strict=True):
        for m in results:
            if m.scenario != f"{load}/{slo}" or not m.latencies_ms:
                continue
            n = len(m.latencies_ms)
            # The CDF over all measured requests: unfinished ones never reach 1.
            total = max(m.requests, n)
            ax.plot(m.latencies_ms, [(i + 1) / total for i in range(n)], label=m.policy, lw=1)
        ax.set_xscale("log")
        ax.set_title(f"{slo}-{load}", fontsize=9)
        ax.set_xlabel("end-to-end latency (ms)")
    axes[0].set_ylabel("fraction of requests")
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    path = out / "latency_cdf.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(path)
    return written
