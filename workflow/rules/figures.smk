# One rule per figure, named as its target (`snakemake fig2`); its inputs come
# from negatives.grid, and its outputs must be grid.figure_outputs(config, name).


rule fig2:
    input:
        probes=figure_probes("fig2"),
    output:
        pdf=report(f"{R}/figures/fig2.pdf", caption="../report/fig2.rst", category="Figure 2"),
        png=report(f"{R}/figures/fig2.png", caption="../report/fig2.rst", category="Figure 2"),
        csv=report(f"{R}/figures/fig2.csv", caption="../report/fig2.rst", category="Figure 2"),
    params:
        config=json.dumps(config, sort_keys=True),
        out=subpath(output.pdf, strip_suffix=".pdf"),
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        "logs/figures/fig2.log",
    conda:
        "../../envs/negatives.yaml"
    shell:
        "python -m negatives figure fig2 --config-json {params.config:q} --probes {input.probes:q}"
        " --out {params.out:q} > {log:q} 2>&1"
