# One rule per figure, named as its target (`snakemake fig2`); its inputs come
# from negatives.grid, and its outputs must be grid.figure_outputs(config, name).


rule fig2:
    input:
        probes=figure_inputs("fig2"),
    output:
        pdf=report(f"{R}/figures/fig2.pdf", caption="../report/fig2.rst", category="Figure 2"),
        png=report(f"{R}/figures/fig2.png", caption="../report/fig2.rst", category="Figure 2"),
        csv=report(f"{R}/figures/fig2.csv", caption="../report/fig2.rst", category="Figure 2"),
    params:
        config=json.dumps(config, sort_keys=True),
        out=subpath(output.pdf, strip_suffix=".pdf"),
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
        cpus_per_task=cpus,
        gpu=0,
    log:
        "logs/figures/fig2.log",
    conda:
        "../../envs/negatives.yaml"
    shell:
        "python -m negatives figure fig2 --config-json {params.config:q} --probes {input.probes:q}"
        " --out {params.out:q} > {log:q} 2>&1"


# Section 4 (fig4, fig5, fig6, tables_a4_a6): drawn from the analyses of the
# baseline runs; one rule each, alike but for its name and report category
for figure, category in [("fig4", "Figure 4"), ("fig5", "Figure 5"), ("fig6", "Figure 6"),
                         ("tables_a4_a6", "Tables A4-A6")]:

    rule:
        name:
            figure
        input:
            analyses=figure_inputs(figure),
        output:
            **{ext: report(f"{R}/figures/{figure}.{ext}", caption=f"../report/{figure}.rst", category=category)
               for ext in grid.FIGURE_EXTENSIONS},
        params:
            figure=figure,
            config=json.dumps(config, sort_keys=True),
            out=subpath(output.pdf, strip_suffix=".pdf"),
        threads: 1
        resources:
            mem_mb=per_attempt(8000),
            runtime=per_attempt(10),
            cpus_per_task=cpus,
            gpu=0,
        log:
            f"logs/figures/{figure}.log",
        conda:
            "../../envs/negatives.yaml"
        shell:
            "python -m negatives figure {params.figure} --config-json {params.config:q} --probes {input.analyses:q}"
            " --out {params.out:q} > {log:q} 2>&1"
