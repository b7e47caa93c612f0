"""The report's figures, drawn from the loaded tables; they compute nothing the tables do not hold.

Every figure uses one style (STYLE, applied by the page) and a fixed colour per architecture.
No torch here.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, FormatStrFormatter, LogLocator, MaxNLocator, NullLocator

from harness.attribution import attributed_rows
from harness.contracts import ATTRIBUTION_COLUMNS, BASE_VARIANT, FULL_PRECISION_BITS
from harness.report.captions import caption
from harness.report.tables import Aggregate
from harness.text import missing, num, step

DPI = 100
PANEL_INCHES = (5.0, 3.5)
NCOLS = 3  # panels per row in the per-architecture figures
EVENT_COLOURS = {"spike": "#e69f00", "collapse": "#d62728", "overfit_divergence": "#7b4fa6", "divergence": "#222222",
                 "nonfinite": "#0072b2"}
# one style for every figure, applied per figure so the caller's matplotlib state is untouched
STYLE = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
         "font.family": "DejaVu Sans", "axes.titleweight": "bold", "legend.frameon": False}


def collapse_k_n(row) -> tuple[int, int]:
    """k collapsed of the n seeds that could show one (a crash, or a run evaluated once, cannot)."""
    return int(row["collapse_count"]), int(row["collapse_n"])


def _figure(n_panels: int = 1, ncols: int = NCOLS, sharey: bool = False, size=PANEL_INCHES):
    ncols = min(ncols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows + 0.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharey=sharey, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        fig.delaxes(ax)
    return fig, list(axes[:n_panels])


def png(fig: Figure) -> bytes:
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
    """step x run table of one metric, a run's column keyed (variant, seed); non-finite values become gaps."""
    sel = trajectories[(trajectories["arch"] == arch) & (trajectories["split"] == split)
                       & (trajectories["metric"] == metric)]
    sel = sel.drop_duplicates(["variant", "seed", "step"], keep="last")
    wide = sel.pivot(index="step", columns=["variant", "seed"], values="value").sort_index()
    return wide.astype(float).replace([np.inf, -np.inf], np.nan)


def _shade_events(ax, events: pd.DataFrame, x_end: float, variant: bool = False) -> None:
    """Shade each event from onset to end (to the last step if it never recovered) and label it (with the
    run's variant when ``variant``: a study with a sweep)."""
    labelled: list[tuple[float, float]] = []  # (x, y) of the labels so far: close onsets stack down
    for ev in events.sort_values(["onset_step", "seed"]).itertuples(index=False):
        if missing(ev.onset_step):
            continue
        start = float(ev.onset_step)
        end = float(ev.end_step) if not missing(ev.end_step) else x_end
        colour = EVENT_COLOURS.get(ev.type, "#777777")
        ax.axvspan(start, max(end, start), color=colour, alpha=0.12, lw=0)
        ax.axvline(start, color=colour, lw=0.8, alpha=0.7)
        y = 0.98
        while any(abs(x - start) < 0.03 * x_end and abs(y - y_) < 0.01 for x, y_ in labelled):
            y -= 0.32
        labelled.append((start, y))
        where = "" if ev.split == "val" else f" ({ev.split})"
        run = f"{ev.variant} s{int(ev.seed)}" if variant else f"s{int(ev.seed)}"
        ax.annotate(f"{ev.type}{where} {run}", xy=(start, y), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=7, color=colour)


def _event_handles(events: pd.DataFrame) -> list:
    return [Patch(color=EVENT_COLOURS.get(t, "#777777"), alpha=0.35, label=f"{t} event")
            for t in sorted(set(events["type"]))]


def fig_trajectories(agg: Aggregate) -> Figure:
    archs, colours = agg.archs, agg.colours
    fig, axes = _figure(len(archs), sharey=True)
    published = agg.published_curves
    x_end = float(agg.trajectories["step"].max()) if len(agg.trajectories) else 1.0
    status = agg.runs.set_index(["arch", "variant", "seed"])["status"]
    shown = []  # every plotted perplexity after the first tenth of training: the y range
    for i, (ax, arch) in enumerate(zip(axes, archs)):
        colour = colours[arch]
        val = np.exp(_curves(agg.trajectories, arch, "val", "loss"))
        marker = "o" if len(val.index) <= 3 else None  # a pipeline (eam) is evaluated once, at the end
        for seed in val.columns:
            ax.plot(val.index, val[seed], color=colour, alpha=0.3, lw=0.8, marker=marker)
            if status.get((arch, *seed)) == "diverged" and val[seed].notna().any():
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
        _shade_events(ax, agg.events[agg.events["arch"] == arch], x_end, agg.multi_variant)
        first, last = i % NCOLS == 0, i % NCOLS == NCOLS - 1 or i == len(archs) - 1
        _log_ppl_axis(ax, agg.unit, left_label=f"validation perplexity (per {agg.unit})" if first else None,
                      right_label=last)
        ax.set_xlim(-0.02 * x_end, 1.03 * x_end)
        ax.set_xlabel("training step")
        trained = len(val.columns)
        seeds = int((agg.runs["arch"] == arch).sum())
        what = "runs" if agg.multi_variant else "seeds"  # a sweep: every variant's seeds in one panel
        ax.set_title(f"{arch} ({trained} {what})" if trained == seeds
                     else f"{arch} ({trained} of {seeds} {what} trained)",
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


def _variant_slots(agg: Aggregate) -> list[tuple[str | None, float, float]]:
    """(variant, centre offset, width scale) of each variant's place beside its architecture's tick; one
    slot (None, 0, 1) when the study has one variant, so the figures look as they did before sweeps."""
    if not (agg.multi_variant and "variant" in agg.summary):
        return [(None, 0.0, 1.0)]
    n = len(agg.variants)
    return [(v, float(c), 1.0 / n) for v, c in zip(agg.variants, np.linspace(-0.36, 0.36, n))]


def _of(table: pd.DataFrame, arch: str, variant: str | None) -> pd.DataFrame:
    rows = table[table["arch"] == arch]
    return rows if variant is None else rows[rows["variant"].astype(str) == variant]


def _variant_label(ax, x: float, variant: str | None) -> None:
    if variant is not None:
        ax.annotate(variant, xy=(x, 0.01), xycoords=("data", "axes fraction"), rotation=90, ha="center",
                    va="bottom", fontsize=7, color="#555555")


def fig_distributions(agg: Aggregate) -> Figure:
    slots = _variant_slots(agg)
    width = max(4.0, 1.1 * len(agg.archs) + 2.5) * (1 if len(slots) == 1 else min(len(slots), 3))
    fig, axes = _figure(2, ncols=2 if len(slots) == 1 else 1, size=(width, 3.8))
    trained = agg.runs[agg.runs["status"] != "failed"]
    for ax, column, prefix, title in ((axes[0], "final_smoothed_loss", "final_ppl", "final (smoothed)"),
                                      (axes[1], "best_loss", "best_ppl", "best")):
        ppl = np.exp(trained[column].astype(float))
        finite = ppl[np.isfinite(ppl)]
        top = float(finite.max()) * 1.25 if len(finite) else 10.0
        bottom = float(finite.min()) / 1.25 if len(finite) else 1.0
        for i, arch in enumerate(agg.archs):
            for variant, centre, scale in slots:
                x = i + centre
                values = np.exp(_of(trained, arch, variant).sort_values("seed")[column].astype(float)).to_numpy()
                offsets = np.linspace(-0.15, 0.15, len(values)) * scale if len(values) > 1 else np.zeros(len(values))
                ok, broken = np.isfinite(values), np.isposinf(values)  # inf: diverged; nan: nothing measured
                ax.scatter(x - 0.1 * scale + offsets[ok], values[ok], color=agg.colours[arch], s=28, zorder=3,
                           edgecolor="white", linewidth=0.5)
                ax.scatter(x - 0.1 * scale + offsets[broken], np.full(broken.sum(), top / 1.1), marker="^",
                           color="black", zorder=3)
                rows = _of(agg.summary, arch, variant)
                if len(rows):
                    med, lo, hi = (float(rows.iloc[0][f"{prefix}_{k}"]) for k in ("median", "lo", "hi"))
                    if math.isfinite(med):
                        lo, hi = (min(max(v, bottom), top) if math.isfinite(v) else top for v in (lo, hi))
                        ax.errorbar([x + 0.25 * scale], [med], yerr=[[max(med - lo, 0)], [max(hi - med, 0)]],
                                    fmt="D", color="black", ms=5 if scale == 1 else 3, capsize=4 * scale ** 0.5,
                                    lw=1.2, zorder=4)
                _variant_label(ax, x, variant)
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
    slots = _variant_slots(agg)
    width = max(4.0, 1.1 * len(agg.archs) + 2.0) * (1 if len(slots) == 1 else min(len(slots), 3))
    fig, (ax,) = _figure(1, size=(width, 3.4))
    for i, arch in enumerate(agg.archs):
        for variant, centre, scale in slots:
            rows = _of(agg.summary, arch, variant)
            if rows.empty:
                continue
            row, x = rows.iloc[0], i + centre
            rate, lo, hi = (float(row[k]) for k in ("collapse_rate", "collapse_rate_lo", "collapse_rate_hi"))
            k, n = collapse_k_n(row)
            if math.isfinite(rate):
                ax.bar([x], [rate], color=agg.colours[arch], alpha=0.75, width=0.55 * scale)
                ax.errorbar([x], [rate], yerr=[[rate - lo], [hi - rate]], color="black", capsize=5 * scale, lw=1.2)
            ax.annotate(f"{k}/{n}" if n else "not\nmeasurable", xy=(x, min(hi if math.isfinite(hi) else 0, 1.0) + 0.03),
                        ha="center", fontsize=9 if scale == 1 else 7)
            _variant_label(ax, x, variant)
    ax.set_ylim(0, 1.12)
    ax.set_xticks(range(len(agg.archs)), agg.archs)
    ax.set_ylabel("share of seeds with a collapse or divergence")
    ax.set_title("collapse rate, 95% Wilson interval")
    return fig


def fig_pairs(agg: Aggregate) -> Figure | None:
    """The probability-of-improvement matrix; one panel per variant when the study has more than one."""
    archs = agg.archs
    if len(archs) < 2 or agg.pairs.empty:
        return None
    by_variant = agg.multi_variant and "variant" in agg.pairs
    variants = sorted(set(agg.pairs["variant"].astype(str))) if by_variant else [None]
    index = {a: i for i, a in enumerate(archs)}
    side = 0.9 * len(archs) + 2.0
    if variants == [None]:
        fig, axes = _figure(1, size=(side + 1.4, side))
    else:
        fig, axes = _figure(len(variants), ncols=min(len(variants), 2), size=(side + 0.4, side))
    image = None
    for ax, variant in zip(axes, variants):
        pairs = agg.pairs if variant is None else agg.pairs[agg.pairs["variant"].astype(str) == variant]
        prob = np.full((len(archs), len(archs)), np.nan)
        labels = np.full(prob.shape, "", dtype=object)
        for row in pairs.itertuples(index=False):
            a, b = index[row.arch_a], index[row.arch_b]
            prob[a, b], prob[b, a] = row.prob_improvement, 1 - row.prob_improvement
            labels[a, b] = f"{row.prob_improvement:.2f}\n[{row.pi_lo:.2f}, {row.pi_hi:.2f}]"
            labels[b, a] = f"{1 - row.prob_improvement:.2f}\n[{1 - row.pi_hi:.2f}, {1 - row.pi_lo:.2f}]"
        image = ax.imshow(np.ma.masked_invalid(prob), cmap=sns.color_palette("vlag_r", as_cmap=True), vmin=0, vmax=1)
        undecidable = np.zeros(prob.shape, dtype=bool)
        for row in pairs.itertuples(index=False):
            if not row.decidable:
                undecidable[index[row.arch_a], index[row.arch_b]] = undecidable[index[row.arch_b], index[row.arch_a]] = True
        for (i, j), label in np.ndenumerate(labels):
            if undecidable[i, j]:  # saturated colours at 3 vs 3 seeds would read as strong effects
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#e6e6e6", edgecolor="#9a9a9a",
                                       hatch="///", lw=0))
            dark = abs(prob[i, j] - 0.5) > 0.3 and not undecidable[i, j]  # white on the dark ends of the scale
            ax.text(j, i, label, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        if variant is None:
            fig.colorbar(image, ax=ax, label="P(row has lower final perplexity than column)", shrink=0.85)
        ax.set_xticks(range(len(archs)), archs, rotation=30, ha="right")
        ax.set_yticks(range(len(archs)), archs)
        ax.grid(False)
        ax.set_xlabel("column architecture")
        ax.set_ylabel("row architecture")
        ax.set_title("probability of improvement [interval]" if variant is None else variant)
    if variants != [None]:
        fig.colorbar(image, ax=axes, label="P(row has lower final perplexity than column)", shrink=0.85)
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
        _shade_events(ax, agg.events[agg.events["arch"] == arch], x_end, agg.multi_variant)
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


def _symlog_bits_axis(ax, unit: str, label: bool = True) -> None:
    ax.set_yscale("symlog", linthresh=0.01, linscale=1.0)
    ticks = [m * 10.0 ** e for e in range(-3, 3) for m in (1, 2, 5)]  # 0.001 .. 500, readable without exponents
    ax.yaxis.set_major_locator(FixedLocator(sorted([-t for t in ticks] + [0.0] + ticks)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.axhline(0, color="grey", lw=0.8)
    if label:
        ax.set_ylabel(f"loss increase (bits per {unit})")


def fig_quantization(agg: Aggregate) -> Figure | None:
    """bpt increase against bits for the trained models; against step per width when snapshots exist."""
    summary = agg.quantization_summary
    if summary is None or summary.empty:
        return None
    summary = summary[summary["bits"] != FULL_PRECISION_BITS]
    if summary.empty:
        return None
    final = summary[summary["final"].astype(bool)]
    widths = sorted(summary["bits"].unique(), reverse=True)
    over_steps = summary.groupby("arch")["step"].nunique().max() > 1
    fig, axes = _figure(1 + (len(widths) if over_steps else 0), ncols=4, sharey=True, size=(4.2, 3.4))
    archs = [a for a in agg.archs if a in set(summary["arch"])]

    def band(ax, x, rows, colour, marker):
        ax.fill_between(x, rows["bpt_increase_min"], rows["bpt_increase_max"], color=colour, alpha=0.2, lw=0)
        ax.plot(x, rows["bpt_increase_median"], color=colour, lw=1.8, marker=marker, ms=4)

    for arch in archs:
        rows = final[final["arch"] == arch].sort_values("bits")
        band(axes[0], rows["bits"], rows, agg.colours[arch], "o")
    axes[0].set_xticks(widths)
    axes[0].set_xlabel("weight bits (per-row, symmetric)")
    axes[0].set_title("trained model")
    _symlog_bits_axis(axes[0], agg.unit)
    for ax, width in zip(axes[1:], widths if over_steps else []):
        for arch in archs:
            rows = summary[(summary["arch"] == arch) & (summary["bits"] == width)].sort_values("step")
            band(ax, rows["step"], rows, agg.colours[arch], "o" if len(rows) <= 12 else None)
        ax.set_xlabel("training step")
        ax.set_title(f"{width} bits over training")
        _symlog_bits_axis(ax, agg.unit, label=False)
    handles = [Line2D([], [], color=agg.colours[a], lw=1.8, marker="o", ms=4, label=a) for a in archs]
    handles.append(Patch(color="grey", alpha=0.3, label="range over seeds"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3 * len(axes)), fontsize=8)
    return fig


def _settings(table: pd.DataFrame | None) -> list[str]:
    return [] if table is None or table.empty else sorted(set(table["setting"].astype(str)))


def _setting_title(setting: str) -> str:
    return "learning rate only" if setting == BASE_VARIANT else setting


def _lr_axis(ax, lrs) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(lrs)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("peak learning rate")


def fig_lr_curves(agg: Aggregate) -> Figure | None:
    """Final validation loss against lr per architecture (median, seeds' range), one panel per setting."""
    curves = agg.lr_curves
    settings = _settings(curves)
    if not settings:
        return None
    curves = curves.astype({"setting": str})
    fig, axes = _figure(len(settings), sharey=True)
    archs = [a for a in agg.archs if a in set(curves["arch"])]
    top = _lr_curves_top(curves)
    clip = (lambda v: v) if top is None else (lambda v: np.minimum(np.asarray(v, dtype=float), top))
    diverged_any = off_scale_any = False
    for i, (ax, setting) in enumerate(zip(axes, settings)):
        rows = curves[curves["setting"] == setting]
        for arch in archs:
            r = rows[rows["arch"] == arch].sort_values("lr")
            if r.empty:
                continue
            colour = agg.colours[arch]
            ax.fill_between(r["lr"], clip(r["final_loss_min"]), clip(r["final_loss_max"]), color=colour, alpha=0.2,
                            lw=0)
            ax.plot(r["lr"], clip(r["final_loss_median"]), color=colour, lw=1.8, marker="o", ms=4)
            bad = r[r["n_diverged"].fillna(0) > 0]
            diverged_any |= not bad.empty
            for b in bad.itertuples(index=False):
                y = float(clip(b.final_loss_median))
                ax.plot([b.lr], [y], marker="x", ms=9, mew=2, color="black", zorder=4)
                ax.annotate(f"{int(b.n_diverged)}/{int(b.n)} div.", xy=(b.lr, y),
                            xytext=(4, 5), textcoords="offset points", fontsize=7, color=colour)
            if top is not None:  # off the scale: a triangle at the top edge with the median's value
                for o in r[r["final_loss_median"].astype(float) > top].itertuples(index=False):
                    off_scale_any = True
                    ax.plot([o.lr], [top], marker="^", ms=8, color=colour, mec="black", mew=0.6, ls="",
                            clip_on=False, zorder=5)
                    ax.annotate(f"{float(o.final_loss_median):.3g}", xy=(o.lr, top), xytext=(-7, -4),
                                textcoords="offset points", ha="right", va="top", fontsize=7, color=colour,
                                fontweight="bold")
        initial = rows.drop_duplicates("arch")[["arch", "initial_loss"]].dropna()
        if initial["initial_loss"].nunique() == 1:
            ax.axhline(float(initial["initial_loss"].iloc[0]), color="grey", ls="--", lw=1.0)
        else:
            for r in initial.itertuples(index=False):
                ax.axhline(float(r.initial_loss), color=agg.colours.get(r.arch, "grey"), ls="--", lw=0.9)
        _lr_axis(ax, rows["lr"].unique())
        ax.set_xlim(float(rows["lr"].min()) / 1.5, float(rows["lr"].max()) * 2.0)  # room for the labels
        if i % NCOLS == 0:
            ax.set_ylabel(f"final validation loss (nats per {agg.unit})")
        ax.set_title(_setting_title(setting))
    handles = [Line2D([], [], color=agg.colours[a], lw=1.8, marker="o", ms=4, label=a) for a in archs]
    handles += [Line2D([], [], color="grey", lw=1.8, marker="o", ms=4, label="median over seeds"),
                Patch(color="grey", alpha=0.3, label="range over seeds"),
                Line2D([], [], color="grey", ls="--", lw=1.0, label="initial loss")]
    if diverged_any:
        handles.append(Line2D([], [], color="black", marker="x", ls="", mew=2, label="runs diverged (k/n)"))
    if top is not None:
        axes[0].set_ylim(top=top)
    if off_scale_any:
        handles.append(Line2D([], [], color="grey", marker="^", ls="", mec="black", mew=0.6,
                              label="median off the scale (its value)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3 * len(axes)), fontsize=8)
    return fig


LR_CURVES_HEADROOM = 1.1  # the lr curves' y axis stops this factor above the largest initial loss


def _lr_curves_top(curves: pd.DataFrame) -> float | None:
    """The y axis' top when some final loss lies far above every initial loss (an architecture that ended at
    30 nats beside initial losses of 5.5 would flatten the curves near the optimum); None: no cap needed."""
    initial = curves["initial_loss"].astype(float)
    initial = initial[np.isfinite(initial)]
    if initial.empty:
        return None
    top = LR_CURVES_HEADROOM * float(initial.max())
    high = curves[["final_loss_median", "final_loss_max"]].astype(float).to_numpy()
    return top if (high > top).any() else None


def fig_stability_map(agg: Aggregate) -> Figure | None:
    """unstable_rate per (arch, lr) as a heat map with k/n in each cell, one panel per setting."""
    curves = agg.lr_curves
    settings = _settings(curves)
    if not settings:
        return None
    curves = curves.astype({"setting": str})
    archs = [a for a in agg.archs if a in set(curves["arch"])]
    n_lrs = curves["lr"].nunique()
    fig, axes = _figure(len(settings), ncols=2, size=(0.85 * n_lrs + 2.4, 0.55 * len(archs) + 1.6))
    image = None
    for ax, setting in zip(axes, settings):
        rows = curves[curves["setting"] == setting]
        lrs = sorted(rows["lr"].unique())
        rate = rows.pivot_table(index="arch", columns="lr", values="unstable_rate", aggfunc="first")
        rate = rate.reindex(index=archs, columns=lrs)
        image = ax.imshow(np.ma.masked_invalid(rate.to_numpy(dtype=float)), cmap="Reds", vmin=0, vmax=1,
                          aspect="auto")
        cells = {(r.arch, r.lr): r for r in rows.itertuples(index=False)}
        for i, arch in enumerate(archs):
            for j, lr in enumerate(lrs):
                r = cells.get((arch, lr))
                if r is None:
                    continue
                value = float(r.unstable_rate)
                ax.text(j, i, f"{int(r.n_unstable)}/{int(r.n)}", ha="center", va="center", fontsize=9,
                        color="white" if math.isfinite(value) and value > 0.6 else "black")
        ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set_yticks(range(len(archs)), archs)
        ax.grid(False)
        ax.set_xlabel("peak learning rate")
        ax.set_title(_setting_title(setting))
    fig.colorbar(image, ax=axes, label="unstable share of runs", shrink=0.9)
    return fig


MAX_TRACES = 6  # events shown in the diagnostic-traces figure (the caption says six)
TRACE_COLOURS = ("#0072b2", "#009e73", "#cc79a7")


def _departures(agg: Aggregate) -> pd.DataFrame | None:
    """The rows of attribution.csv that name a diagnostic (an event not attributable has one without)."""
    att = attributed_rows(agg.attribution)
    return att if att is None or att.empty else att.astype({"variant": str})


def _trace_events(agg: Aggregate) -> pd.DataFrame:
    """The first MAX_TRACES attributed events (arch, variant, seed, event_type, onset_step), in table order."""
    att = _departures(agg)
    if att is None or att.empty:
        return pd.DataFrame(columns=ATTRIBUTION_COLUMNS[:5])
    keys = att[ATTRIBUTION_COLUMNS[:5]].astype({"variant": str}).drop_duplicates()
    return keys.sort_values(["arch", "variant", "seed", "onset_step"], kind="stable").head(MAX_TRACES)


def fig_diagnostic_traces(agg: Aggregate) -> Figure | None:
    """Validation loss and the first diagnostic(s) around each attributed event, onset and lead marked."""
    events = _trace_events(agg)
    if events.empty:
        return None
    att = _departures(agg)
    traj = agg.trajectories
    traj_variant = traj["variant"].astype(str) if "variant" in traj else pd.Series(BASE_VARIANT, index=traj.index)
    fig, axes = _figure(len(events), size=(4.6, 3.2))
    for ax, ev in zip(axes, events.itertuples(index=False)):
        colour = agg.colours.get(ev.arch, "black")
        rows = att[(att["arch"] == ev.arch) & (att["variant"] == ev.variant) & (att["seed"] == ev.seed)
                   & (att["event_type"] == ev.event_type) & (att["onset_step"] == ev.onset_step)]
        first = rows[rows["first"].astype(str).str.lower() == "true"]
        shown = (first if len(first) else rows).sort_values(["left_step", "diagnostic"]).head(len(TRACE_COLOURS))
        run = traj[(traj["arch"] == ev.arch) & (traj_variant == ev.variant) & (traj["seed"] == ev.seed)]
        onset = float(ev.onset_step)
        earliest = float(shown["left_step"].min()) if len(shown) else onset
        lead = max(onset - earliest, 0.05 * float(run["step"].max() or 1) if len(run) else 1.0, 1.0)
        lo, hi = earliest - 1.5 * lead, onset + 1.5 * lead  # the view: the lead and as much on either side

        def window(split: str, metric: str) -> pd.DataFrame:
            sel = run[(run["split"] == split) & (run["metric"] == metric) & (run["step"] >= lo) & (run["step"] <= hi)]
            return sel.sort_values("step").drop_duplicates("step", keep="last")

        val = window("val", "loss")
        ax.plot(val["step"], val["value"].astype(float).replace([np.inf, -np.inf], np.nan), color=colour, lw=1.8,
                marker="o" if len(val) <= 30 else None, ms=3, label="val loss")
        ax.set_ylabel(f"val loss (nats per {agg.unit})", color=colour, fontsize=8)
        twin = ax.twinx()
        twin.grid(False)
        for colour_d, d in zip(TRACE_COLOURS, shown.itertuples(index=False)):
            trace = window("train", d.diagnostic)
            if trace.empty:
                trace = run[(run["metric"] == d.diagnostic) & (run["step"] >= lo) & (run["step"] <= hi)]
                trace = trace.sort_values("step").drop_duplicates("step", keep="last")
            label = f"{d.diagnostic} (lead {step(d.lead_steps)}, z {num(d.z, 1)})"
            twin.plot(trace["step"], trace["value"].astype(float).replace([np.inf, -np.inf], np.nan),
                      color=colour_d, lw=1.0, label=label)
            ax.axvline(float(d.left_step), color=colour_d, ls=":", lw=1.3)
        values = pd.concat([window("train", d.diagnostic)["value"] for d in shown.itertuples(index=False)]
                           + [pd.Series(dtype=float)]).astype(float)
        values = values[np.isfinite(values)]
        if len(values) and values.min() > 0 and values.max() / values.min() > 50:
            twin.set_yscale("log")
        ax.axvline(onset, color=EVENT_COLOURS.get(ev.event_type, "#d62728"), lw=1.5)
        ax.set_xlim(lo, hi)
        ax.set_xlabel("training step")
        variant = "" if ev.variant == BASE_VARIANT else f" {ev.variant}"
        ax.set_title(f"{ev.arch}{variant} s{int(ev.seed)}: {ev.event_type} at {step(onset)}", fontsize=9)
        twin.tick_params(axis="y", labelsize=7)
        lines = ax.get_lines()[:1] + twin.get_lines()
        ax.legend(handles=lines, labels=[line.get_label() for line in lines], fontsize=6.5, loc="upper left")
    handles = [Line2D([], [], color="#d62728", lw=1.5, label="event onset"),
               Line2D([], [], color="grey", ls=":", lw=1.3, label="diagnostic departed from the stable runs")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    return fig


def figures(agg: Aggregate) -> dict[str, tuple[Figure, str]]:
    """name -> (figure, caption), in page order; figures that have nothing to show are left out."""
    # a study with a sweep: the per-run figures draw the recipe variant alone (pooling variants would mix
    # recipes), those that can put a few variants side by side do so up to MAX_SIDE_BY_SIDE; the number of
    # figures and panels does not grow with the variants, except the per-setting lr curves and stability map
    one = agg.only(agg.recipe_variant)
    few = agg if agg.side_by_side else one
    made = {"trajectories": fig_trajectories(one), "distributions": fig_distributions(few),
            "collapse_rate": fig_collapse_rate(few), "pairs": fig_pairs(few), "grad_norm": fig_grad_norm(one),
            "quantization": fig_quantization(one), "lr_curves": fig_lr_curves(agg),
            "stability_map": fig_stability_map(agg), "diagnostic_traces": fig_diagnostic_traces(agg)}
    return {name: (fig, caption(name, agg.unit, agg.published_curves is not None))
            for name, fig in made.items() if fig is not None}
