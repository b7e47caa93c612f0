"""Aggregate tables -> one self-contained HTML report: figures as base64 PNG, no script, no network.

It reads only what `aggregate` writes, so a report can be rebuilt or restyled without the runs.
The page is byte-for-byte deterministic (sorted inputs, PNGs saved without a Software stamp, no
time stamps), so Snakemake's unit tests and a rerun give the same file. No torch here.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullLocator

from harness import claims, stats
from harness.aggregate import EVENT_COLUMNS, read_table
from harness.collapse import perplexity
from harness.files import write_atomic
from harness.stats import ID_COLUMNS, PAIR_COLUMNS

DPI = 100
PANEL_INCHES = (5.0, 3.5)
NCOLS = 3  # panels per row in the per-architecture figures
EVENT_COLOURS = {"spike": "#e69f00", "collapse": "#d62728", "overfit_divergence": "#7b4fa6", "divergence": "#222222"}
UNITS = {"bytes": "byte", "chars": "character"}
# one style for every figure, applied per figure so the caller's matplotlib state is untouched
STYLE = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
         "font.family": "DejaVu Sans", "axes.titleweight": "bold", "legend.frameon": False}
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # where a relative published_curves path may live


@dataclass
class Aggregate:
    """The tables of one study, as `aggregate` wrote them."""

    study: dict
    runs: pd.DataFrame
    trajectories: pd.DataFrame
    events: pd.DataFrame
    summary: pd.DataFrame
    pairs: pd.DataFrame

    @property
    def archs(self) -> list[str]:
        return sorted(set(self.runs["arch"]) | set(self.summary["arch"]))

    @property
    def colours(self) -> dict[str, tuple]:
        """A fixed colour per architecture, from the sorted list, identical in every figure."""
        palette = sns.color_palette("colorblind" if len(self.archs) <= 10 else "husl", len(self.archs))
        return dict(zip(self.archs, palette))

    @property
    def unit(self) -> str:
        return UNITS.get(self.study.get("data", {}).get("tokens"), "token")


def load(aggregate_dir: Path) -> Aggregate:
    aggregate_dir = Path(aggregate_dir)
    study_path = aggregate_dir / "study.json"
    if not study_path.is_file():
        raise FileNotFoundError(f"{study_path}: missing (written by `python -m harness aggregate`)")
    try:
        study = json.loads(study_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{study_path}: not valid JSON ({e}); rerun aggregate") from e
    def table(name: str, required: list[str]) -> pd.DataFrame:
        return read_table(aggregate_dir / f"{name}.csv", required, "written by `python -m harness aggregate`")

    return Aggregate(
        study=study,
        runs=table("runs", ID_COLUMNS + ["status", "reason"]),
        trajectories=table("trajectories", ID_COLUMNS + ["step", "split", "metric", "value"]),
        events=table("events", EVENT_COLUMNS),
        summary=table("summary", stats.SUMMARY_COLUMNS),
        pairs=table("pairs", PAIR_COLUMNS),
    )


# ---------------------------------------------------------------- numbers and units


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA or (isinstance(x, str) and not x)


def _num(x, digits: int = 2) -> str:
    if _missing(x):
        return ""
    x = float(x)
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:,.{digits}f}"


def _step(x) -> str:
    return "" if _missing(x) or not math.isfinite(float(x)) else f"{int(x):,}"


def _plain(x) -> str:
    """A hyperparameter as written: 96.0 read back from a CSV is 96."""
    if _missing(x):
        return ""
    return f"{int(x):,}" if float(x).is_integer() else f"{float(x):g}"


def _ppl(loss) -> float:
    """Perplexity of a loss; a non-finite loss (a diverged run) is infinite perplexity."""
    if _missing(loss):
        return float("nan")
    return perplexity(float(loss)) if not math.isinf(float(loss)) else float("inf")


def _bits(ppl: float) -> float:
    return math.log2(ppl) if ppl > 0 and math.isfinite(ppl) else float("nan")


def _spread(values: pd.Series, digits: int = 2) -> str:
    """median (range, n) of per-seed values: the honest summary of a handful of seeds."""
    values = values.dropna()
    if values.empty:
        return "no value"
    if len(values) == 1:
        return f"{_num(values.iloc[0], digits)} (1 seed)"
    return (f"{_num(values.median(), digits)} (range {_num(values.min(), digits)}–{_num(values.max(), digits)}, "
            f"{len(values)} seeds)")


# ---------------------------------------------------------------- figures


def _figure(n_panels: int = 1, ncols: int = NCOLS, sharey: bool = False, size=PANEL_INCHES):
    ncols = min(ncols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows + 0.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharey=sharey, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        fig.delaxes(ax)
    return fig, list(axes[:n_panels])


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _log_axis(axis) -> None:
    """Log scale with plain-number ticks at 1, 2, 5 x 10^k (readable without exponents)."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_locator(NullLocator())


def _log_ppl_axis(ax, unit: str, left_label: str | None = None, right_label: bool = True) -> None:
    """Log perplexity on the left, the same scale in bits per token on the right."""
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    bits = ax.secondary_yaxis("right", functions=(lambda p: np.log2(np.clip(p, 1e-9, None)), np.exp2))
    bits.yaxis.set_major_locator(MaxNLocator(6))
    bits.yaxis.set_minor_locator(NullLocator())
    bits.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    if left_label:
        ax.set_ylabel(left_label)
    if right_label:
        bits.set_ylabel(f"bits per {unit}")


def _curves(trajectories: pd.DataFrame, arch: str, split: str, metric: str) -> pd.DataFrame:
    """step x seed table of one metric; non-finite values become gaps."""
    sel = trajectories[(trajectories["arch"] == arch) & (trajectories["split"] == split)
                       & (trajectories["metric"] == metric)]
    sel = sel.drop_duplicates(["seed", "step"], keep="last")
    wide = sel.pivot(index="step", columns="seed", values="value").sort_index()
    return wide.astype(float).replace([np.inf, -np.inf], np.nan)


def _shade_events(ax, events: pd.DataFrame, x_end: float) -> None:
    """Shade each event from onset to end (to the last step if it never recovered) and label it."""
    labelled: list[tuple[float, float]] = []  # (x, y) of the labels so far: close onsets stack down
    for ev in events.sort_values(["onset_step", "seed"]).itertuples(index=False):
        if _missing(ev.onset_step):
            continue
        start = float(ev.onset_step)
        end = float(ev.end_step) if not _missing(ev.end_step) else x_end
        colour = EVENT_COLOURS.get(ev.type, "#777777")
        ax.axvspan(start, max(end, start), color=colour, alpha=0.12, lw=0)
        ax.axvline(start, color=colour, lw=0.8, alpha=0.7)
        y = 0.98
        while any(abs(x - start) < 0.03 * x_end and abs(y - y_) < 0.01 for x, y_ in labelled):
            y -= 0.32
        labelled.append((start, y))
        where = "" if ev.split == "val" else f" ({ev.split})"
        ax.annotate(f"{ev.type}{where} s{int(ev.seed)}", xy=(start, y), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=7, color=colour)


def _event_handles(events: pd.DataFrame) -> list:
    return [Patch(color=EVENT_COLOURS.get(t, "#777777"), alpha=0.35, label=f"{t} event")
            for t in sorted(set(events["type"]))]


def published_curves(study: dict) -> tuple[pd.DataFrame | None, str | None]:
    """The published curves to overlay, or (None, a note saying why there are none)."""
    given = study.get("published_curves")
    if not given:
        return None, None
    path = Path(given)
    for candidate in [path] if path.is_absolute() else [Path.cwd() / path, PACKAGE_ROOT / path]:
        if candidate.is_file():
            return read_table(candidate, ["arch", "step", "split", "metric", "value"], "published curves"), None
    return None, f"The published curves file {given} was not found, so no published curve is overlaid."


def fig_trajectories(agg: Aggregate) -> Figure:
    archs, colours = agg.archs, agg.colours
    fig, axes = _figure(len(archs), sharey=True)
    published, _ = published_curves(agg.study)
    x_end = float(agg.trajectories["step"].max()) if len(agg.trajectories) else 1.0
    status = agg.runs.set_index(["arch", "seed"])["status"]
    shown = []  # every plotted perplexity after the first tenth of training: the y range
    for i, (ax, arch) in enumerate(zip(axes, archs)):
        colour = colours[arch]
        val = np.exp(_curves(agg.trajectories, arch, "val", "loss"))
        marker = "o" if len(val.index) <= 3 else None  # a pipeline (eam) is evaluated once, at the end
        for seed in val.columns:
            ax.plot(val.index, val[seed], color=colour, alpha=0.3, lw=0.8, marker=marker)
            if status.get((arch, seed)) == "diverged" and val[seed].notna().any():
                last = val[seed].last_valid_index()
                ax.plot([last], [val[seed][last]], marker="x", ms=8, mew=2, color="black")
        if len(val.columns):
            ax.fill_between(val.index, val.quantile(0.25, axis=1), val.quantile(0.75, axis=1),
                            color=colour, alpha=0.25, lw=0)
            ax.plot(val.index, val.median(axis=1), color=colour, lw=2.2, marker=marker)
        shown.append(val[val.index >= 0.1 * x_end].to_numpy().ravel())
        train = np.exp(_curves(agg.trajectories, arch, "train", "loss"))
        if len(train.columns):
            ax.plot(train.index, train.median(axis=1), color=colour, lw=1.0, ls="--", alpha=0.85)
        if published is not None:
            pub = published[(published["arch"] == arch) & (published["split"] == "val")
                            & (published["metric"] == "loss") & (published["step"] <= x_end)].sort_values("step")
            ax.plot(pub["step"], np.exp(pub["value"]), color="black", lw=1.2, ls=":")
            shown.append(np.exp(pub.loc[pub["step"] >= 0.1 * x_end, "value"].to_numpy()))
        _shade_events(ax, agg.events[agg.events["arch"] == arch], x_end)
        first, last = i % NCOLS == 0, i % NCOLS == NCOLS - 1 or i == len(archs) - 1
        _log_ppl_axis(ax, agg.unit, left_label=f"validation perplexity (per {agg.unit})" if first else None,
                      right_label=last)
        ax.set_xlim(-0.02 * x_end, 1.03 * x_end)
        ax.set_xlabel("training step")
        trained = len(val.columns)
        seeds = int((agg.runs["arch"] == arch).sum())
        ax.set_title(f"{arch} ({trained} seeds)" if trained == seeds
                     else f"{arch} ({trained} of {seeds} seeds trained)",
                     color=colour)
    values = np.concatenate(shown) if shown else np.array([])
    values = values[np.isfinite(values)]
    if len(values):  # the untrained start is cut so that the differences at the end stay readable
        axes[0].set_ylim(values.min() / 1.15, values.max() * 1.4)
    handles = [Line2D([], [], color="grey", alpha=0.4, lw=0.8, label="one seed (val)"),
               Line2D([], [], color="grey", lw=2.2, label="median over seeds (val)"),
               Patch(color="grey", alpha=0.3, label="interquartile range (val)"),
               Line2D([], [], color="grey", lw=1.0, ls="--", label="median (train)")]
    if (agg.runs["status"] == "diverged").any():
        handles.append(Line2D([], [], color="black", marker="x", ls="", label="diverged (last finite point)"))
    if published is not None:
        handles.append(Line2D([], [], color="black", lw=1.2, ls=":", label="published val (1 seed)"))
    fig.legend(handles=handles + _event_handles(agg.events), loc="outside lower center",
               ncols=min(4, len(handles) + 2), fontsize=8)
    return fig


def fig_distributions(agg: Aggregate) -> Figure:
    fig, axes = _figure(2, ncols=2, size=(max(4.0, 1.1 * len(agg.archs) + 2.5), 3.8))
    summary = agg.summary.set_index("arch")
    trained = agg.runs[agg.runs["status"] != "failed"]
    for ax, column, prefix, title in ((axes[0], "final_smoothed_loss", "final_ppl", "final (smoothed)"),
                                      (axes[1], "best_loss", "best_ppl", "best")):
        ppl = np.exp(trained[column].astype(float))
        finite = ppl[np.isfinite(ppl)]
        top = float(finite.max()) * 1.25 if len(finite) else 10.0
        bottom = float(finite.min()) / 1.25 if len(finite) else 1.0
        for i, arch in enumerate(agg.archs):
            values = np.exp(trained.loc[trained["arch"] == arch].sort_values("seed")[column].astype(float)).to_numpy()
            offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(len(values))
            ok, broken = np.isfinite(values), np.isposinf(values)  # inf: diverged; nan: nothing measured
            ax.scatter(i - 0.1 + offsets[ok], values[ok], color=agg.colours[arch], s=28, zorder=3,
                       edgecolor="white", linewidth=0.5)
            ax.scatter(i - 0.1 + offsets[broken], np.full(broken.sum(), top / 1.1), marker="^", color="black", zorder=3)
            if arch in summary.index:
                med, lo, hi = (float(summary.loc[arch, f"{prefix}_{k}"]) for k in ("median", "lo", "hi"))
                if math.isfinite(med):
                    lo, hi = (min(max(v, bottom), top) if math.isfinite(v) else top for v in (lo, hi))
                    ax.errorbar([i + 0.25], [med], yerr=[[max(med - lo, 0)], [max(hi - med, 0)]], fmt="D",
                                color="black", ms=5, capsize=4, lw=1.2, zorder=4)
        ax.set_ylim(bottom, top)
        _log_ppl_axis(ax, agg.unit, left_label=f"validation perplexity (per {agg.unit})")
        ax.set_xticks(range(len(agg.archs)), agg.archs)
        ax.set_xlim(-0.6, len(agg.archs) - 0.4)
        ax.set_title(title)
    handles = [Line2D([], [], color="grey", marker="o", ls="", label="one seed"),
               Line2D([], [], color="black", marker="D", ls="-", label="median and interval (see table)")]
    if (agg.runs["status"] == "diverged").any():
        handles.append(Line2D([], [], color="black", marker="^", ls="", label="infinite (diverged)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    return fig


def fig_collapse_rate(agg: Aggregate) -> Figure:
    fig, (ax,) = _figure(1, size=(max(4.0, 1.1 * len(agg.archs) + 2.0), 3.4))
    summary = agg.summary.set_index("arch")
    for i, arch in enumerate(agg.archs):
        if arch not in summary.index:
            continue
        row = summary.loc[arch]
        rate, lo, hi = (float(row[k]) for k in ("collapse_rate", "collapse_rate_lo", "collapse_rate_hi"))
        k, n = _collapse_k_n(row)
        if math.isfinite(rate):
            ax.bar([i], [rate], color=agg.colours[arch], alpha=0.75, width=0.55)
            ax.errorbar([i], [rate], yerr=[[rate - lo], [hi - rate]], color="black", capsize=5, lw=1.2)
        ax.annotate(f"{k}/{n}" if n else "not\nmeasurable", xy=(i, min(hi if math.isfinite(hi) else 0, 1.0) + 0.03),
                    ha="center", fontsize=9)
    ax.set_ylim(0, 1.12)
    ax.set_xticks(range(len(agg.archs)), agg.archs)
    ax.set_ylabel("share of seeds with a collapse or divergence")
    ax.set_title("collapse rate, 95% Wilson interval")
    return fig


def fig_pairs(agg: Aggregate) -> Figure | None:
    archs = agg.archs
    if len(archs) < 2 or agg.pairs.empty:
        return None
    index = {a: i for i, a in enumerate(archs)}
    prob = np.full((len(archs), len(archs)), np.nan)
    labels = np.full(prob.shape, "", dtype=object)
    for row in agg.pairs.itertuples(index=False):
        a, b = index[row.arch_a], index[row.arch_b]
        prob[a, b], prob[b, a] = row.prob_improvement, 1 - row.prob_improvement
        labels[a, b] = f"{row.prob_improvement:.2f}\n[{row.pi_lo:.2f}, {row.pi_hi:.2f}]"
        labels[b, a] = f"{1 - row.prob_improvement:.2f}\n[{1 - row.pi_hi:.2f}, {1 - row.pi_lo:.2f}]"
    side = 0.9 * len(archs) + 2.0
    fig, (ax,) = _figure(1, size=(side + 1.4, side))
    image = ax.imshow(np.ma.masked_invalid(prob), cmap=sns.color_palette("vlag_r", as_cmap=True), vmin=0, vmax=1)
    for (i, j), label in np.ndenumerate(labels):  # white on the dark ends of the colour scale
        ax.text(j, i, label, ha="center", va="center", fontsize=8,
                color="white" if abs(prob[i, j] - 0.5) > 0.3 else "black")
    fig.colorbar(image, ax=ax, label="P(row has lower final perplexity than column)", shrink=0.85)
    ax.set_xticks(range(len(archs)), archs, rotation=30, ha="right")
    ax.set_yticks(range(len(archs)), archs)
    ax.grid(False)
    ax.set_xlabel("column architecture")
    ax.set_ylabel("row architecture")
    ax.set_title("probability of improvement [interval]")
    return fig


def fig_grad_norm(agg: Aggregate) -> Figure | None:
    if not ((agg.trajectories["split"] == "train") & (agg.trajectories["metric"] == "grad_norm")).any():
        return None
    fig, axes = _figure(len(agg.archs), sharey=True)
    x_end = float(agg.trajectories["step"].max())
    clip = float(agg.study.get("recipe", {}).get("grad_clip") or 0)
    for i, (ax, arch) in enumerate(zip(axes, agg.archs)):
        colour = agg.colours[arch]
        norm = _curves(agg.trajectories, arch, "train", "grad_norm")
        peak = _curves(agg.trajectories, arch, "train", "grad_norm_max")
        for seed in norm.columns:
            ax.plot(norm.index, norm[seed], color=colour, alpha=0.3, lw=0.8)
        if not len(norm.columns):
            ax.text(0.5, 0.5, "no gradient norm logged", transform=ax.transAxes, ha="center", color="grey")
        if len(norm.columns):
            ax.plot(norm.index, norm.median(axis=1), color=colour, lw=2.0)
        if len(peak.columns):
            ax.plot(peak.index, peak.median(axis=1), color=colour, lw=0.9, ls=":")
        if clip > 0:
            ax.axhline(clip, color="grey", ls="--", lw=0.9)
        _shade_events(ax, agg.events[agg.events["arch"] == arch], x_end)
        ax.set_xlim(-0.02 * x_end, 1.03 * x_end)
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
        ax.set_xlabel("training step")
        if i % NCOLS == 0:
            ax.set_ylabel("gradient norm (pre-clip)")
        ax.set_title(arch, color=colour)
    handles = [Line2D([], [], color="grey", alpha=0.4, lw=0.8, label="one seed: window mean"),
               Line2D([], [], color="grey", lw=2.0, label="median over seeds: window mean"),
               Line2D([], [], color="grey", lw=0.9, ls=":", label="median over seeds: window max")]
    if clip > 0:
        handles.append(Line2D([], [], color="grey", ls="--", lw=0.9, label=f"clip threshold {clip:g}"))
    fig.legend(handles=handles + _event_handles(agg.events), loc="outside lower center", ncols=4, fontsize=8)
    return fig


# ---------------------------------------------------------------- HTML pieces


def _table(header: list[str], rows: list[list], row_classes: list[str] | None = None,
           numeric: set[int] = frozenset()) -> str:
    """An HTML table of escaped text; ``numeric`` column indices are right-aligned."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        cells = "".join(('<td class="num">' if c in numeric else "<td>") + html.escape(str(v)) + "</td>"
                        for c, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>"


def _img(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{name}"><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _section(anchor: str, title: str, parts: list[str]) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'


def _collapse_k_n(row: pd.Series) -> tuple[int, int]:
    """k collapsed of the n seeds that could show one (a crash, or a run evaluated once, cannot)."""
    return int(row["collapse_count"]), int(row["collapse_n"])


def _claims_section(agg: Aggregate) -> str:
    verdicts = claims.evaluate(agg.study, agg.runs, agg.events)
    parts = []
    if verdicts.empty:
        parts.append(_p("No published claim concerns the architectures of this study."))
    else:
        rows = [[v.claim, v.arch, v.verdict, f"{v.k}/{v.n}",
                 f"{_num(v.rate)} [{_num(v.lo)}, {_num(v.hi)}]" if v.n else "", v.test, v.sentence]
                for v in verdicts.itertuples(index=False)]
        parts.append(_table(["published claim", "arch", "measured verdict", "k/n seeds",
                             "rate [95% Wilson]", "test", "in words"], rows))
        sources = sorted(set(verdicts["source"]))
        parts.append(_p("Claims from: " + "; ".join(sources) + ".", "note"))
    if agg.study.get("published"):
        parts.append(_published_vs_measured(agg))
    return _section("claims", "Published claims, tested", parts)


def _published_vs_measured(agg: Aggregate) -> str:
    pub = claims.published(agg.study["published"])
    runs, events = agg.runs, agg.events
    unit = UNITS.get(pub.tokens, "token")
    rows = []

    def with_bits(ppl: float) -> str:
        return f"{_num(ppl)} ({_num(_bits(ppl))} bits/{unit})"

    for h in pub.headlines:
        mine = runs[(runs["arch"] == h.arch) & (runs["status"] != "failed")]
        if mine.empty:
            rows.append([h.arch, "any", "", "not run in this study"])
            continue
        final = mine["final_loss"].map(_ppl)
        smoothed = mine["final_smoothed_loss"].map(_ppl)
        best = mine["best_loss"].map(_ppl)
        rows.append([h.arch, "final val perplexity (last evaluation)", with_bits(h.final_ppl), _spread(final)])
        rows.append([h.arch, "final val perplexity (smoothed, last 3 evaluations)", "not published", _spread(smoothed)])
        rows.append([h.arch, "minimum val perplexity", f"{with_bits(h.min_ppl)} at step {h.min_step:,}",
                     f"{_spread(best)}; at steps {', '.join(_step(s) for s in mine['best_step'])}"])
        collapses = events[(events["arch"] == h.arch) & (events["type"] == "collapse")]
        published = "none" if h.collapse_start is None else (
            f"steps {h.collapse_start:,}–{h.collapse_end:,}, peak {_num(h.peak_ppl)} at step {h.peak_step:,}")
        measured = f"{collapses['seed'].nunique()} of {len(mine)} seeds"
        if len(collapses):
            measured += ": " + "; ".join(
                f"seed {int(e.seed)} onset {_step(e.onset_step)}, peak {_num(e.peak_value)} at {_step(e.peak_step)}"
                for e in collapses.itertuples(index=False))
        rows.append([h.arch, "collapse", published, measured])
    data, steps = agg.study.get("data", {}).get("name"), int(agg.study.get("recipe", {}).get("steps", 0))
    differs = [f"{data} (not {pub.data})"] if data != pub.data else []
    differs += [f"{steps:,} steps (not {pub.steps:,})"] if steps != pub.steps else []
    return ('<h3 id="published">Published headline figures beside the measured ones</h3>'
            + _p(f"{pub.title}. Published: {pub.seeds} seed per architecture, {pub.steps:,} steps on {pub.data}. "
                 f"Source: {pub.source}.", "note")
            + (_p("Not like for like: this study uses " + " and ".join(differs) + ".", "warn") if differs else "")
            + _table(["arch", "figure", "published", "measured here (median, range over seeds)"], rows))


def _seed_caveat(agg: Aggregate) -> str:
    """Say in words what the seed count can and cannot support."""
    sentences = []
    trained = agg.summary["n_seeds"] - agg.summary["n_failed"]
    if len(trained) and trained.min() < stats.MIN_BOOTSTRAP_SEEDS:
        n = int(trained.min())
        sentences.append(
            f"With {n} trained seed{'s' if n != 1 else ''} in the smallest group, the interval shown is the range "
            "of the seeds (a percentile bootstrap at this size covers about 75%, not 95%); a 95% interval needs "
            f"at least {stats.MIN_BOOTSTRAP_SEEDS} seeds per architecture.")
    m = len(agg.pairs)
    if m and (agg.pairs["min_possible_p"].fillna(1.0) * m > stats.ALPHA).all():
        floor = float(agg.pairs["min_possible_p"].min())
        sentences.append(
            f"The smallest p-value an exact rank test can give with these seed counts is {floor:.3g}; after Holm "
            f"correction over {m} comparison{'s' if m > 1 else ''} no difference can reach {stats.ALPHA}, so this "
            "study cannot support a claim that one architecture beats another: that needs at least "
            f"{stats.seeds_needed(m)} seeds per architecture.")
    return _p(" ".join(sentences), "warn") if sentences else ""


def _summary_section(agg: Aggregate) -> str:
    target = agg.study.get("target_ppl")
    header = ["arch", "completed/diverged/failed", "final ppl median", "final ppl IQM", "final ppl interval",
              f"final bits/{agg.unit}", "best ppl median", "best ppl interval", "interval kind"]
    header += [f"median steps to ppl {target:g}"] if target else []
    header += ["collapsed or diverged", "collapse rate [95% Wilson]"]
    rows = []
    for s in agg.summary.sort_values("arch").to_dict("records"):
        k, n = _collapse_k_n(s)
        row = [s["arch"], f"{s['n_completed']}/{s['n_diverged']}/{s['n_failed']} of {s['n_seeds']}",
               _num(s["final_ppl_median"]), _num(s["final_ppl_iqm"]),
               f"{_num(s['final_ppl_lo'])}–{_num(s['final_ppl_hi'])}", _num(s["final_bpb_median"], 3),
               _num(s["best_ppl_median"]), f"{_num(s['best_ppl_lo'])}–{_num(s['best_ppl_hi'])}", s["interval"]]
        if target:
            reach = s["time_to_target_median"]
            row.append("never" if not math.isfinite(reach) else _step(reach))
        if n:
            row += [f"{k}/{n}", f"{_num(s['collapse_rate'])} [{_num(s['collapse_rate_lo'])}, {_num(s['collapse_rate_hi'])}]"]
        else:
            row += ["not measurable", "evaluated too rarely for the detector"]
        rows.append(row)
    published = "; the last evaluation alone is in the published comparison above" if agg.study.get("published") else ""
    note = _p(f"Perplexity is per {agg.unit} on the validation split. Final = exp(mean validation loss of the "
              f"last 3 evaluations), the value the statistics use{published}. A diverged run is kept and counts "
              "as infinite perplexity; a failed run (a crash) has no score.", "note")
    table = _table(header, rows, numeric={2, 3, 5, 6} | ({9} if target else set()))
    return _section("summary", "Summary over seeds", [table, note, _seed_caveat(agg)])


def _not_completed_section(agg: Aggregate) -> str:
    runs = agg.runs.sort_values(["arch", "seed"])
    bad = runs[runs["status"] != "completed"]
    expected = {(a, int(s)) for a in agg.study.get("archs", {}) for s in agg.study.get("seeds", [])}
    missing = sorted(expected - set(zip(runs["arch"], runs["seed"].astype(int))))
    parts = []
    if bad.empty and not missing:
        parts.append(_p(f"All {len(runs)} runs completed."))
    if len(bad):
        rows = [[r.arch, int(r.seed), r.status, _step(r.steps_done) if "steps_done" in runs else "", r.reason]
                for r in bad.itertuples(index=False)]
        parts.append(_p(f"{len(bad)} of {len(runs)} runs did not complete, listed here with their reason. A "
                        "diverged run stays in every statistic, as infinite perplexity and as a collapse; a failed "
                        "run (a crash of the harness, not of the model) has no score and is only counted."))
        parts.append(_table(["arch", "seed", "status", "steps done", "reason"], rows,
                            row_classes=list(bad["status"])))
    if missing:
        parts.append(_p("Runs of the study with no run folder in the aggregate: "
                        + ", ".join(f"{a} seed {s}" for a, s in missing) + ".", "warn"))
    return _section("not-completed", "Runs that did not complete", parts)


def _events_section(agg: Aggregate) -> str:
    ev = agg.events.sort_values(["arch", "seed", "onset_step"])
    if ev.empty:
        return _section("events", "Events", [_p("The detector found no event in any run.")])
    notes = "note" in ev.columns
    rows = [[e["arch"], int(e["seed"]), e["type"], e["split"], _step(e["onset_step"]), _step(e["train_onset_step"]),
             _step(e["peak_step"]), _num(e["peak_value"]), f"{_num(e['magnitude'])}x",
             "never" if _missing(e["end_step"]) else _step(e["end_step"]),
             "yes" if str(e["recovered"]).lower() == "true" else "no", _num(e["score"]), _num(e["threshold"])]
            + ([e["note"] if not _missing(e["note"]) else ""] if notes else [])
            for e in ev.to_dict("records")]
    return _section("events", "Events", [
        _table(["arch", "seed", "type", "split", "onset step", "train onset step", "peak step",
                f"peak ppl (per {agg.unit})", "magnitude", "end step", "recovered", "score", "threshold"]
               + (["note"] if notes else []), rows, numeric={4, 5, 6, 7, 8, 9, 11, 12}),
        _p("Onset: the last evaluation still at the pre-event level, on the curve that defines the event; "
           "train onset: the same on the training curve. Magnitude: peak / pre-event perplexity. End: the first "
           "evaluation back within 10% of the pre-event level.", "note")])


def _pipeline_section(agg: Aggregate) -> str:
    """eam's own figures per seed: how much of its teacher it keeps, and what its memory holds."""
    if "eam_eam_loss" not in agg.runs.columns:
        return ""
    runs = agg.runs[agg.runs["eam_eam_loss"].notna()].sort_values(["arch", "seed"])
    rows = [[r["arch"], int(r["seed"]), r["eam_teacher"], _num(_ppl(r["eam_teacher_loss"])),
             _num(_ppl(r["eam_eam_loss"])), _num(r["eam_transfer"], 3),
             f"{_step(r['eam_live_locations'])} of {_step(r['eam_max_L'])}", _step(r["eam_keys_written"]),
             _step(r["eam_write_keys_per_s"])]
            for r in runs.to_dict("records")]
    return _section("pipelines", "Distilled memory (eam)", [
        _table(["arch", "seed", "teacher", f"teacher val ppl (per {agg.unit})", "EAM val ppl", "transfer",
                "live locations", "keys written", "write keys/s"], rows, numeric={1, 3, 4, 5, 7, 8}),
        _p("Each eam run writes its same-seed teacher's hidden states into an elastic memory, trains an encoder "
           "to find them and a decoder to read them, then is evaluated once on the study's validation batches, "
           "as a proper distribution. Transfer = teacher loss / EAM loss (1 = the memory keeps all of the "
           "teacher's quality). Write throughput is a timing of this machine, not a model property.", "note")])


def _params_section(agg: Aggregate) -> str:
    shape = agg.study.get("shape", {})
    mode, tolerance = shape.get("mode"), shape.get("tolerance")
    # seeds of an architecture share its shape: one row per distinct shape, so a disagreement shows
    known = agg.runs.dropna(subset=["n_params"]).drop_duplicates(["arch", "n_params", "knob_value", "deviation"])
    rows = []
    for r in known.sort_values(["arch", "seed"]).to_dict("records"):
        deviation = r["deviation"]
        if _missing(deviation) or tolerance is None or mode != "matched":
            within = ""
        elif _missing(r["knob"]) and r["arch"] != shape.get("reference"):
            within = "not matched: no width knob"
        else:
            within = "yes" if abs(float(deviation)) <= tolerance else "NO"
        reconstruction = {True: "yes", False: "no"}.get(r["reconstruction"], "")
        rows.append([r["arch"], r["build"] or "", reconstruction, "" if _missing(r["knob"]) else r["knob"],
                     _plain(r["knob_value"]),
                     _step(r["n_params"]), r["reference"] or "", _step(r["reference_params"]),
                     "" if _missing(deviation) else f"{100 * float(deviation):+.3f}%", within])
    parts = [_p(f"Shape mode: {mode}; reference: {shape.get('reference')}"
                + (f"; tolerance {100 * tolerance:g}% (matched mode)." if tolerance is not None else ".")),
             _table(["arch", "build", "reconstruction", "width knob", "knob value", "parameters", "reference",
                     "reference parameters", "deviation", "within tolerance"], rows, numeric={4, 5, 7, 8})]
    unrecorded = sorted(set(agg.runs["arch"]) - set(known["arch"]))
    if unrecorded:
        parts.append(_p(f"No run of {', '.join(unrecorded)} recorded a parameter count (each failed before).",
                        "warn"))
    if known["arch"].duplicated().any():
        parts.append(_p("Seeds of one architecture disagree on their shape: see the rows above.", "warn"))
    return _section("params", "Parameter matching", parts)


def _recipe_section(agg: Aggregate) -> str:
    study = agg.study

    def show(v) -> str:
        return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else str(v)

    rows = [[f"recipe.{k}", show(v)] for k, v in sorted(study.get("recipe", {}).items())]
    rows += [[f"model.{k}", show(v)] for k, v in sorted(study.get("model", {}).items())]
    rows += [["data", show(study.get("data", {}))], ["seeds", show(study.get("seeds", []))],
             ["shape", show(study.get("shape", {}))],
             ["detect", show(study.get("detect") or "documented defaults (harness.collapse)")],
             ["target_ppl", show(study.get("target_ppl"))]]
    rows += [[f"archs.{name}", show(spec)] for name, spec in sorted(study.get("archs", {}).items())]
    return _section("recipe", "Recipe", [_p("Every architecture of the study follows this one recipe."),
                                         _table(["setting", "value"], rows)])


def _provenance_section(agg: Aggregate) -> str:
    runs = agg.runs.sort_values(["arch", "seed"])
    versions = sorted(c for c in runs.columns if c.startswith("version_"))
    fields = ["status", "steps_done", "wall_time_s", "device", "dtype", "threads", "config_hash", "data_sha256"]
    fields = [f for f in fields if f in runs.columns]
    shown = {"steps_done": _step, "wall_time_s": lambda v: f"{float(v):,.1f}", "threads": _step,
             "data_sha256": lambda v: str(v)[:12]}
    rows = [[r["arch"], int(r["seed"])] + ["" if _missing(r[f]) else shown.get(f, str)(r[f]) for f in fields + versions]
            for r in runs.to_dict("records")]
    header = ["arch", "seed"] + [f.replace("_", " ") for f in fields] + [v.removeprefix("version_") for v in versions]
    return _section("provenance", "Provenance", [
        _table(header, rows, row_classes=list(runs["status"])),
        _p("Wall time in seconds. data sha256 is shortened to 12 hex digits; config hash is shared by the "
           "seeds of one architecture.", "note")])


def _pairs_table(agg: Aggregate) -> str:
    if agg.pairs.empty:
        return _p("One architecture: no pairs to compare.")
    rows = [[p.arch_a, p.arch_b, f"{p.n_a} vs {p.n_b}", _num(p.prob_improvement),
             f"[{_num(p.pi_lo)}, {_num(p.pi_hi)}]" + ("" if _missing(p.pi_interval) else f" {p.pi_interval}"),
             _num(p.mannwhitney_p, 3), _num(p.holm_p, 3), _num(p.fisher_p, 3), _num(p.min_possible_p, 4), p.verdict]
            for p in agg.pairs.sort_values(["arch_a", "arch_b"]).itertuples(index=False)]
    return _table(["A", "B", "seeds", "P(A better)", "interval", "Mann-Whitney p", "Holm p", "Fisher p (collapse)",
                   "smallest possible p", "verdict"], rows, numeric={3, 5, 6, 7, 8})


# ---------------------------------------------------------------- the page


def figures(agg: Aggregate) -> dict[str, tuple[Figure, str]]:
    """name -> (figure, caption), in page order; figures that have nothing to show are left out."""
    unit = agg.unit
    _, missing_note = published_curves(agg.study)
    made = {
        "trajectories": (fig_trajectories(agg),
                         f"Validation perplexity per {unit} (log scale, bits per {unit} on the right) against training "
                         "step: each seed faint, the median over seeds bold with its interquartile band, the training "
                         "median dashed. Shaded spans are detected events, labelled with type and seed "
                         "(an unrecovered event is shaded to the end). The y range fits the curves after the first "
                         "tenth of training, so the untrained start runs off the top. An architecture evaluated "
                         "only at the end (a pipeline such as eam) shows points."
                         + (" The published curve (one seed) is dotted, cut at this study's last step."
                            if agg.study.get("published_curves") and not missing_note else "")
                         + (" " + missing_note if missing_note else "")),
        "distributions": (fig_distributions(agg),
                          f"Final (smoothed) and best validation perplexity per {unit}, one point per seed that "
                          "trained; the diamond and bar are the median and the interval of the summary table."),
        "collapse_rate": (fig_collapse_rate(agg),
                          "Share of trained seeds with a collapse or a divergence (an event, or a diverged run), "
                          "with its 95% Wilson interval; k/n above."),
        "pairs": (fig_pairs(agg),
                  "Probability that the row architecture ends with a lower final perplexity than the column one "
                  "(Mann-Whitney U / (n_a n_b), ties 1/2), with its 95% interval: a seeded bootstrap from 5 seeds "
                  "each, below that Newcombe's score interval (a bootstrap of 3 perfectly separated seeds would "
                  "claim [1, 1]); 0.5 = no difference."),
        "grad_norm": (fig_grad_norm(agg),
                      "Pre-clip global gradient norm against training step (log scale), with the detected events."),
    }
    return {name: (fig, caption) for name, (fig, caption) in made.items() if fig is not None}


def render(aggregate_dir: Path, out_html: Path, figures_dir: Path | None = None) -> None:
    """Write the study's report from the tables in ``aggregate_dir`` (and each figure to ``figures_dir``)."""
    agg = load(aggregate_dir)
    study = agg.study
    with matplotlib.rc_context(STYLE):
        pngs = {}
        for name, (fig, caption) in figures(agg).items():
            pngs[name] = (_png(fig), caption)
    if figures_dir is not None:
        for name, (png, _) in pngs.items():
            write_atomic(Path(figures_dir) / f"{name}.png", png)

    def figure(name: str) -> str:
        return _img(name, *pngs[name]) if name in pngs else ""

    data = study.get("data", {})
    recipe = study.get("recipe", {})
    title = f"{study.get('name', 'study')}: multi-seed comparison and collapse report"
    head = [f"<h1>{html.escape(title)}</h1>"]
    if study.get("smoke"):
        head.append(f'<div class="banner" id="smoke-banner">Smoke study: each run trains only '
                    f"{recipe.get('steps', 0):,} steps. It exercises every stage of the harness but is far too "
                    "short and small to support or refute any claim below.</div>")
    if study.get("description"):
        head.append(_p(study["description"]))
    head.append(_p(f"{len(agg.archs)} architectures ({', '.join(agg.archs)}) × {len(study.get('seeds', []))} seeds "
                   f"on {data.get('name', '?')} ({data.get('tokens', '?')}), {recipe.get('steps', 0):,} steps per run; "
                   f"{len(agg.runs)} runs aggregated."))
    sections = [
        ("claims", "claims"), ("summary", "summary"), ("not-completed", "runs not completed"),
        ("trajectories", "trajectories"), ("distributions", "final and best"), ("collapse-rate", "collapse rate"),
        ("pairs", "pairs"), ("grad-norm", "gradient norm"), ("events", "events")]
    sections += [("pipelines", "eam")] if "eam_eam_loss" in agg.runs.columns else []
    sections += [("params", "parameters"), ("recipe", "recipe"), ("provenance", "provenance")]
    head.append("<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in sections) + "</nav>")
    body = head + [
        _claims_section(agg),
        _summary_section(agg),
        _not_completed_section(agg),
        _section("trajectories", "Validation perplexity over training", [figure("trajectories")]),
        _section("distributions", "Final and best perplexity per seed", [figure("distributions")]),
        _section("collapse-rate", "Collapse rate", [figure("collapse_rate")]),
        _section("pairs", "Pairwise comparison", [figure("pairs"), _pairs_table(agg)]),
        _section("grad-norm", "Gradient norm", [figure("grad_norm") or _p("No gradient norm was logged.")]),
        _events_section(agg),
        _pipeline_section(agg),
        _params_section(agg),
        _recipe_section(agg),
        _provenance_section(agg),
    ]
    template = Template(resources.files("harness").joinpath("templates/report.html").read_text())
    page = template.substitute(title=html.escape(title), body="\n".join(body))
    write_atomic(Path(out_html), page)
