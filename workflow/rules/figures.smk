# One rule per figure, named as its target (`snakemake fig2`); its inputs come
# from negatives.grid, and its outputs must be grid.figure_outputs(config, name).
# Every figure writes {pdf, png, csv}, each registered for `snakemake --report`
# with the caption workflow/report/{figure}.rst.

# drawn from the runs' probes (probe.json)
PROBE_FIGURES = [("fig2", "Figure 2"), ("fig3", "Figure 3"), ("table1", "Table 1"), ("simclr", "Appendix A.2 (SimCLR)"),
                 ("fig_methods", "Methods")]
# Section 4: drawn from the analyses of the baseline runs (pairs.parquet)
ANALYSIS_FIGURES = [("fig4", "Figure 4"), ("fig5", "Figure 5"), ("fig6", "Figure 6"), ("tables_a4_a6", "Tables A4-A6")]

for figure, category in PROBE_FIGURES + ANALYSIS_FIGURES:

    rule:
        name:
            figure
        input:
            figure_inputs(figure),
        output:
            **{ext: report(f"{R}/figures/{figure}.{ext}", caption=f"../report/{figure}.rst", category=category)
               for ext in grid.FIGURE_EXTENSIONS},
        params:
            figure=figure,
            config=config_json(),
            out=subpath(output.pdf, strip_suffix=".pdf"),
        threads: 1
        resources:
            mem_mb=per_attempt(8000 if figure in grid.ANALYSES else 2000),
            runtime=per_attempt(10),
            cpus_per_task=cpus,
            gpu=0,
        log:
            f"logs/figures/{figure}.log",
        conda:
            "../../envs/negatives.yaml"
        shell:
            "python -m negatives figure {params.figure} --config-json {params.config:q} --probes {input:q}"
            " --out {params.out:q} > {log:q} 2>&1"
