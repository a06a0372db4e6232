"""PNG figures of a grid: SLO hit rate and normalised cost per setting (the paper's main
figure; bars are means over seeds, whiskers one standard deviation), and end-to-end latency
CDFs for the settings the paper names (first seed). matplotlib, Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from esg.sim.metrics import RunMetrics
from esg.sim.report import NAMED_CELLS, cells, table_rows
from esg.sim.summary import summary_rows


def write_figures(results: Sequence[RunMetrics], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summary_rows(table_rows(results))
    policies = list(dict.fromkeys(str(r["policy"]) for r in summary))
    present = {(str(r["workload"]), str(r["slo"])) for r in summary}
    grid = [cell for cell in cells() if cell in present]
    labels = [f"{slo}\n{load}" for load, slo in grid]
    written = []
    for column, title, name in (
        ("slo_hit_rate", "SLO hit rate", "slo_hit_rate.png"),
        ("cost_norm", "cost per request, normalised to ESG", "cost_norm.png"),
    ):
        fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(grid)), 3.6))
        width = 0.8 / max(1, len(policies))
        for i, policy in enumerate(policies):
            values, spreads = [], []
            for load, slo in grid:
                match = [r for r in summary
                         if r["policy"] == policy and r["workload"] == load and r["slo"] == slo]
                values.append(float(match[0][f"{column}_mean"]) if match  # type: ignore[arg-type]
                              else float("nan"))
                spreads.append(float(match[0][f"{column}_sd"]) if match  # type: ignore[arg-type]
                               else float("nan"))
            xs = [j + (i - (len(policies) - 1) / 2) * width for j in range(len(grid))]
            ax.bar(xs, values, width, yerr=spreads, label=policy, error_kw={"lw": 0.5})
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
    named = [cell for cell in NAMED_CELLS if cell in present] or grid[:1]
    first_seed = min(m.seed for m in results)
    fig, axes = plt.subplots(1, len(named), figsize=(12, 3.4), sharey=True, squeeze=False)
    for ax, (load, slo) in zip(axes[0], named, strict=True):
        for m in results:
            if m.scenario != f"{load}/{slo}" or m.seed != first_seed or not m.latencies_ms:
                continue
            n = len(m.latencies_ms)
            # The CDF over all measured requests: unfinished ones never reach 1.
            total = max(m.requests, n)
            ax.plot(m.latencies_ms, [(i + 1) / total for i in range(n)], label=m.policy, lw=1)
        ax.set_xscale("log")
        ax.set_title(f"{slo}-{load}", fontsize=9)
        ax.set_xlabel("end-to-end latency (ms)")
    axes[0][0].set_ylabel("fraction of requests")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    path = out / "latency_cdf.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(path)
    return written
