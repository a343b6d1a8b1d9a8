"""Search plots: reward per generation (best so far, and the generation's mean) and reward against MFLOPs."""
from __future__ import annotations

from pathlib import Path

from nasx import artifacts


def plot_search(records: list[dict], path: Path, budget_mflops: float | None = None, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in records if r["reward"] is not None]
    gens = sorted({r["gen"] for r in scored})
    mean = [sum(r["reward"] for r in scored if r["gen"] == g) / sum(1 for r in scored if r["gen"] == g)
            for g in gens]
    best, running = [], float("-inf")
    for g in gens:
        running = max(running, max(r["reward"] for r in scored if r["gen"] == g))
        best.append(running)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(gens, best, marker="o", label="best so far")
    ax1.plot(gens, mean, marker=".", label="generation mean")
    ax1.set_xlabel("generation")
    ax1.set_ylabel("reward")
    ax1.set_title("search progress")
    ax1.grid(alpha=0.3)
    ax1.legend()
    sc = ax2.scatter([r["mflops"] for r in scored], [r["reward"] for r in scored], c=[r["gen"] for r in scored],
                     cmap="viridis", s=12)
    top = max(scored, key=lambda r: r["reward"])
    ax2.scatter([top["mflops"]], [top["reward"]], marker="*", s=200, color="red", label="best")
    if budget_mflops is not None:
        ax2.axvline(budget_mflops, color="gray", linestyle="--", label=f"budget {budget_mflops:g} MFLOPs")
    ax2.set_xlabel("MFLOPs (multiply-accumulates)")
    ax2.set_ylabel("reward")
    ax2.set_title("candidates")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right")
    fig.colorbar(sc, ax=ax2, label="generation")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    artifacts.save_figure(fig, path)
    plt.close(fig)
