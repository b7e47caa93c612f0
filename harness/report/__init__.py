"""The study's report, one concern per module: ``tables`` (load what `aggregate` wrote), ``figures``
(draw them), ``sections`` (HTML text and tables), ``page`` (assemble and write the page),
``captions`` (every figure's caption, once). The report computes nothing: every number comes
from the aggregate tables.

A study with a sweep (several variants, harness.stability's tables non-empty) adds four sections after
the gradient norm, each only when its table holds rows: "Learning-rate sensitivity" (figure lr_curves,
sensitivity.csv and sensitivity_pairs.csv), "Stability map" (figure stability_map, lr_curves.csv as a
k/n grid), "What preceded each collapse" (figure diagnostic_traces: up to six attributed events, from
attribution.csv and the trajectories; attribution_summary.csv's sentences) and "Stabiliser ablations"
(ablations.csv). Each says in one line how it was decided. The tables' ``variant`` column is shown only
when the study has more than one variant, so a study without a sweep gets the page it had before.

With several variants the per-run figures (trajectories, gradient norm, quantization) draw the recipe
variant alone (notes.json's recipe_variant, else the first in table order); distributions, collapse rate,
pairs and the summary put up to three variants side by side and show the recipe variant alone beyond
that, so the page does not grow with the variants except the per-setting lr curves and stability map.
Each reduced figure or table says in one line which variant it shows and where the rest are (the csv).

A study that declares controls (harness.controls) opens with one line per control under its description
(notes.json's controls.lines) and gets a "Controls" section first, every comparison of each control's pair
(controls.csv); a study without them gets the page it had."""
