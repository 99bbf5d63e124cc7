"""pareto.png (main metric vs trainable parameters, log x) and memory.png (vs peak memory).

One point per method with its std over seeds as error bars; the Pareto front (no other method is
both cheaper and better) is drawn as a step line. Agg renders the same bytes for the same inputs.
"""

from __future__ import annotations

from pathlib import Path

from peftlab.report.render import metric_heading
from peftlab.report.table import Row, Table


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower or equal x and higher or equal y, one
    of them strictly), ordered by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], float("-inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def write_plots(table: Table, out_dir: Path) -> list[Path]:
    return [
        _plot(table, out_dir / "pareto.png", lambda r: r.trainable.mean, "Trainable parameters (log scale)", log_x=True),
        _plot(table, out_dir / "memory.png", lambda r: r.peak_mb.mean, "Peak memory (MB)", log_x=False),
    ]


def _plot(table: Table, path: Path, x_of, x_label: str, log_x: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display; the same on every machine
    import matplotlib.pyplot as plt

    metric = table.main_metric
    info = table.metric_info[metric]
    scale = 100 if info.percent else 1
    rows: list[Row] = table.rows
    xs = [x_of(r) for r in rows]
    ys = [scale * r.scores[metric].mean for r in rows]
    errs = [scale * r.scores[metric].std for r in rows]

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=150)
    ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=3, color="tab:blue", zorder=3)
    for x, y, row in zip(xs, ys, rows):
        ax.annotate(row.label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = pareto_front(list(zip(xs, ys if info.higher_is_better else [-y for y in ys])))
    front_x, front_y = [xs[i] for i in front], [ys[i] for i in front]
    ax.step(front_x, front_y, where="post", color="tab:red", linewidth=1.2, zorder=2)
    ax.plot(front_x, front_y, "o", markersize=11, markerfacecolor="none", markeredgecolor="tab:red", label="Pareto front", zorder=4)
    ax.margins(x=0.15, y=0.1)  # room for the labels at the edges
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{metric_heading(info)}, mean ± std over seeds")
    ax.set_title(f"{table.model} on {table.task} ({table.split})", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version string: identical bytes across matplotlib releases
    plt.close(fig)
    return path
