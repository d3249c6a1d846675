"""PNG plots of a report: accuracy against size and decode speed (one point per artifact, labelled
with the loop rate where samples looped), and accuracy against the thinking budget when several
budgets were evaluated."""

from __future__ import annotations

from pathlib import Path

from distill.core.io import atomic_path

TRADEOFF_PNG = "accuracy_size_speed.png"
BUDGET_PNG = "accuracy_vs_think_budget.png"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_tradeoff(rows: list[dict], path: Path) -> Path | None:
    """x: size on disk, y: pass@1, colour: decode tokens/s. One point per model (its largest
    thinking budget when swept). None when fewer than two models have a size (remote models
    only, or one model: a trade-off needs two points, and matplotlib costs a second)."""
    per_model: dict[str, dict] = {}
    for row in rows:
        best = per_model.get(row["label"])
        if best is None or (row.get("think_budget") or 0) > (best.get("think_budget") or 0):
            per_model[row["label"]] = row
    points = [r for r in per_model.values() if r.get("size_bytes") and r.get("pass_at_1") is not None]
    if len(points) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    speeds = [r.get("decode_tokens_per_s") or 0.0 for r in points]
    scatter = ax.scatter([r["size_bytes"] / 1e6 for r in points], [100 * r["pass_at_1"] for r in points],
                         c=speeds, cmap="viridis", s=[60 + 4 * min(s, 100) for s in speeds],
                         edgecolors="black", zorder=3)
    xs, ys = [r["size_bytes"] / 1e6 for r in points], [100 * r["pass_at_1"] for r in points]
    ax.set_xscale("log")
    ax.set_ylim(max(-2, min(ys) - 12), min(102, max(ys) + 12))
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    fig.colorbar(scatter, ax=ax, label="decode tokens/s (single stream)")
    ax.set_xlabel("size on disk (MB, log scale)")
    ax.set_ylabel("pass@1 (%)")
    ax.grid(True, alpha=0.3, zorder=0)
    ax.set_title(f"Accuracy vs size vs speed: {points[0]['benchmark']}")
    texts = [ax.text(x, y, _point_label(r), fontsize=8, ha="center", va="center", zorder=4)
             for x, y, r in zip(xs, ys, points)]
    place_labels(fig, ax, texts, scatter)  # last: the axes have their final size
    return _save(fig, path)


def _point_label(row: dict) -> str:
    """The row's label, with its loop rate when any of its samples looped."""
    loops = row.get("loop_rate")
    return row["label"] + (f"\nloops {loops:.0%}" if loops else "")


def place_labels(fig, ax, texts: list, markers) -> None:
    """Move the labels off the markers and off each other (adjustText: the markers, at their drawn
    size, repel the labels and the labels repel each other), with a thin line back to the point.
    The demo's q4_k_m, q8_0 and onnx-int4 points sit within a few MB and points of each other."""
    from adjustText import adjust_text

    fig.canvas.draw()  # the labels' sizes are known only once drawn
    adjust_text(texts, objects=markers, ax=ax, expand=(1.15, 1.4), force_text=(0.5, 0.8),
                force_static=(0.5, 0.8), max_move=None, arrowprops=dict(arrowstyle="-", color="grey", lw=0.5))


def plot_budget(rows: list[dict], path: Path) -> Path | None:
    """pass@1 against the thinking budget, one line per model. None without a sweep."""
    budgets = sorted({r["think_budget"] for r in rows if r.get("think_budget")})
    if len(budgets) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^vP*X"
    for n, label in enumerate(dict.fromkeys(r["label"] for r in rows)):
        line = sorted((r["think_budget"], r["pass_at_1"]) for r in rows
                      if r["label"] == label and r.get("think_budget") and r["pass_at_1"] is not None)
        ax.plot([b for b, _ in line], [100 * a for _, a in line], marker=markers[n % len(markers)],
                alpha=0.85, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("thinking budget (tokens before </think> is forced)")
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Accuracy vs thinking budget: {rows[0]['benchmark']}")
    return _save(fig, path)
