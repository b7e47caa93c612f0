localrules:
    report,
    report_default,


rule report:
    input:
        tables=expand("results/{{study}}/{name}", name=AGGREGATE_FILES),
        published_curves=lambda wildcards: (
            published_curves_file(STUDIES[wildcards.study]) or []
        ),
    output:
        html="reports/{study}/collapse.html",
        # each figure once more as a PNG, for `snakemake --report report.html`
        figures=report(
            directory("reports/{study}/figures"),
            patterns=["{figure}.png"],
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{study}",
            labels={"figure": "{figure}"},
        ),
    log:
        "logs/{study}/report.log",
    params:
        aggregate=lambda wildcards, input: os.path.dirname(input.tables[0]),
        curves=lambda wildcards, input: (
            f"--published-curves {shlex.quote(input.published_curves)}"
            if input.published_curves
            else ""
        ),
        captions=figure_captions,
    shell:
        "python -m harness report --aggregate {params.aggregate} --out {output.html} --figures {output.figures} {params.curves}"
        " > {log} 2>&1"


rule report_default:
    input:
        html=f"reports/{DEFAULT_STUDY}/collapse.html",
        figures=f"reports/{DEFAULT_STUDY}/figures",
    output:
        "reports/collapse.html",
    log:
        "logs/report_default.log",
    shell:
        "cp {input.html} {output} 2> {log}"
