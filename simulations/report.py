"""Run artefacts a person reads: a PNG of metrics over rounds and a short Markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrec.runconfig import RunConfig
from fedrec.store.atomic import atomic_write_bytes, atomic_write_text

PLOTTED = ("rmse", "mae", "hr@10", "ndcg@10", "epsilon")


def write_plot(path: Path, history: list[dict[str, Any]]) -> None:
    """One panel per metric present in the history, against the round number."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in PLOTTED if any(m in row for row in history)]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = [r for r in history if name in r]
        ax.plot([r["round"] for r in rows], [r[name] for r in rows], marker="o")
        ax.set_xlabel("round")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_report(path: Path, cfg: RunConfig, history: list[dict[str, Any]], final: dict[str, Any],
                 seconds: float) -> None:
    """What ran, how it ended, and where the numbers are."""
    flat = cfg.flat
    lines = [
        f"# fedrec run: {cfg.data.dataset} / {cfg.data.protocol}",
        "",
        f"- rounds: {len(history)} (configured {cfg.fed.rounds}), cohort {flat['cohort']}, "
        f"model dim {cfg.model.dim}, {cfg.model.kind}",
        f"- privacy: dp.unit={flat['dp.unit']}" + (f", epsilon={final['epsilon']:.3f} (delta={flat['dp.delta']}, "
                                                   f"{flat['dp.accountant']})" if "epsilon" in final else ""),
        f"- secure aggregation: {'on' if cfg.secagg.enabled else 'off'}",
        f"- wall time: {seconds:.1f} s",
        "",
        "## Final metrics",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in final.items() if isinstance(v, float) and k != "round"]
    dropouts = sum(int(r.get("dropouts", 0)) for r in history)
    lines += ["", f"Dropouts over the run: {dropouts}.", "",
              "Files: `config.toml` (re-run with `fedrec simulate --config`), `metrics.jsonl`, `checkpoint.npz`, "
              "`metrics.png`.", ""]
    atomic_write_text(path, "\n".join(lines))
