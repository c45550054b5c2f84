"""Figures of measurements, for people who would rather look than read: matplotlib, drawn off screen."""

from __future__ import annotations

from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import temporary_sibling
from edgellm.measure.reports import PerplexityReport

FORMATS = (".png", ".svg", ".pdf")


def check_plot_path(path: Path) -> None:
    """Refuse a figure path matplotlib would not write, before any measuring."""
    if path.suffix.lower() not in FORMATS:
        raise EdgeLLMError(f"--plot {path}: unknown image format {path.suffix or '(none)'}; end the name with {', '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise EdgeLLMError(f"--plot {path}: folder {path.parent} does not exist; create it or choose another path")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EdgeLLMError("--plot needs matplotlib: pip install 'edgellm[plot]'") from None


def plot_evaluation(report: PerplexityReport, path: Path) -> Path:
    """Perplexity ratio against file size, one point per model, and the mean KL from the reference
    at each position of the evaluation window (how error grows with context)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    compared = [row for row in report.models if "perplexity_ratio" in row]
    figure, (sizes, positions) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    reference = report.reference["transformers"] if report.reference else report.models[0]["model"]
    for row in compared:
        name = Path(row["model"]).stem
        sizes.scatter(row["size_bytes"] / 1e6, row["perplexity_ratio"], s=60, zorder=3)
        sizes.annotate(name, (row["size_bytes"] / 1e6, row["perplexity_ratio"]), textcoords="offset points", xytext=(6, 6), fontsize=9)
        positions.plot(range(1, len(row["kl_by_position"]) + 1), row["kl_by_position"], label=name)
    if report.reference is None:  # the first model is the reference: ratio 1 by definition, at its own size
        first = report.models[0]
        sizes.scatter(first["size_bytes"] / 1e6, 1.0, s=60, color="grey", zorder=3)
        sizes.annotate(Path(first["model"]).stem, (first["size_bytes"] / 1e6, 1.0), textcoords="offset points", xytext=(6, 6), fontsize=9)
    sizes.margins(0.25)  # room for the labels
    sizes.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    sizes.set(xlabel="model file (MB)", ylabel="perplexity ratio", title=f"against {Path(reference).name}")
    sizes.grid(alpha=0.3)
    positions.set(xlabel="position in the window", ylabel="mean KL from the reference (nats)", title=f"{report.tokens} tokens of {Path(report.corpus).name}")
    positions.set_yscale("symlog", linthresh=1e-4)
    positions.grid(alpha=0.3)
    if compared:
        positions.legend(fontsize=9)
    staging = temporary_sibling(path).with_suffix(path.suffix)  # readers see no figure or a whole one
    try:
        figure.savefig(staging, dpi=120)
        staging.replace(path)
    except OSError as exc:
        raise EdgeLLMError(f"cannot write {path} ({exc.strerror or exc}); choose another --plot path") from None
    finally:
        plt.close(figure)
        staging.unlink(missing_ok=True)
    return path
