localrules:
    report,
    report_default,


rule report:
    input:
        expand("results/{{study}}/{name}", name=AGGREGATE_TABLES),
    output:
        html="reports/{study}/collapse.html",
    params:
        aggregate=lambda wildcards, input: os.path.dirname(input[0]),
    log:
        "logs/{study}/report.log",
    shell:
        "python -m harness report --aggregate {params.aggregate} --out {output.html} > {log} 2>&1"


rule report_default:
    input:
        f"reports/{config['study']}/collapse.html",
    output:
        "reports/collapse.html",
    log:
        "logs/report_default.log",
    shell:
        "cp {input} {output} 2> {log}"
