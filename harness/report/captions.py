"""The caption of every figure, written once: the HTML page and Snakemake's own report
(workflow/report/figure.rst, through the report rule's params) both take them from here.
Plain data: importing this module loads nothing else."""

from __future__ import annotations

CAPTIONS = {
    "trajectories": (
        "Validation perplexity per {unit} (log scale, bits per {unit} on the right) against training step: each "
        "seed faint, the median over seeds bold with its interquartile band, the training median dashed. Shaded "
        "spans are detected events, labelled with type and seed (an unrecovered event is shaded to the end). The "
        "y range fits the curves after the first tenth of training, so the untrained start runs off the top. An "
        "architecture evaluated only at the end (a pipeline) shows points."),
    "distributions": (
        "Final (smoothed) and best validation perplexity per {unit}, one point per seed that trained; the diamond "
        "and bar are the median and the interval of the summary table."),
    "collapse_rate": (
        "Share of trained seeds with a collapse or a divergence (an event, or a diverged run), with its 95% Wilson "
        "interval; k/n above."),
    "pairs": (
        "Probability that the row architecture ends with a lower final perplexity than the column one "
        "(Mann-Whitney U / (n_a n_b), ties 1/2), with Newcombe's 95% score interval, which keeps its coverage at "
        "every seed count (a bootstrap of perfectly separated seeds would claim [1, 1]); 0.5 = no difference. Greyed, hatched cells are pairs the seed counts cannot decide, however far apart they look."),
    "grad_norm": (
        "Pre-clip global gradient norm against training step (log scale), with the events the detector found on "
        "the loss curves (it does not read gradient norms)."),
    "quantization": (
        "Validation loss increase, in bits per {unit}, when every weight matrix is rounded per row (symmetric) to "
        "the given width, over the same model at full precision on the same fixed validation batches: the median "
        "over seeds (line) and the seeds' range (band), one line per architecture. Left: the trained model against "
        "the width. Further panels, when the study kept weight snapshots: the same against training step, one "
        "panel per width. Symmetric-log y axis, linear within ±0.01."),
    "lr_curves": (
        "Final validation loss (nats per {unit}) against the peak learning rate (log scale), one line per "
        "architecture: the median over seeds with the seeds' range as a band; a diverged run counts as its "
        "initial loss (Wortsman et al. 2023). A cross marks a learning rate where runs diverged, with how many of "
        "the seeds; the dashed line is the initial loss. When a final loss lies far above the initial loss, the y axis "
        "stops a tenth above the largest initial loss and a median beyond it is a triangle at the top edge, with "
        "its value. One panel per setting (the sweep's other values; "
        "'learning rate only': the study swept nothing else)."),
    "stability_map": (
        "Share of runs that were unstable (diverged, or a collapse or divergence event) per architecture and "
        "learning rate, k/n written in each cell; one panel per setting."),
    "diagnostic_traces": (
        "What preceded each collapse: for up to six events with an attribution, the validation loss (left axis, "
        "nats per {unit}) and the diagnostic(s) of the collapsing run that departed first from the stable runs of "
        "the same architecture and schedule (right axis, their own scale) over the steps around the event. The "
        "solid vertical line is the event's onset, the dotted one the step the diagnostic departed (its lead, in "
        "steps, and its z against the stable runs in the legend)."),
}
PUBLISHED_CURVE = " The published curve (one seed) is dotted, cut at this study's last step."


def caption(name: str, unit: str = "token", published_curve: bool = False) -> str:
    """The caption of figure ``name`` for a study whose tokens are ``unit``s."""
    text = CAPTIONS[name].format(unit=unit)
    return text + PUBLISHED_CURVE if name == "trajectories" and published_curve else text


def captions(unit: str = "token", published_curve: bool = False) -> dict[str, str]:
    return {name: caption(name, unit, published_curve) for name in CAPTIONS}
