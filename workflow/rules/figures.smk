# One rule per figure record (negatives.figure_registry), named as its target
# (`snakemake fig2`): its inputs and outputs come from negatives.grid, its
# caption (workflow/report/{figure}.rst), report category and memory from the
# record. Every output is registered for `snakemake --report`.

for figure in FIGURE_RECORDS.values():

    rule:
        name:
            figure.name
        input:
            figure_inputs(figure.name),
        output:
            **{ext: report(path, caption=figure_caption(figure), category=figure.category)
               for ext, path in zip(figure.extensions, figure_outputs(figure.name))},
        params:
            figure=figure.name,
            config=config_json(),
            out=subpath(output[0], strip_suffix=f".{figure.extensions[0]}"),
        threads: 1
        priority: int(figure.name == FIRST_FIGURE)
        resources:
            mem_mb=per_attempt(figure.mem_mb),
            runtime=per_attempt(10),
            cpus_per_task=cpus,
            gpu=0,
        log:
            f"logs/figures/{figure.name}.log",
        conda:
            "../../envs/negatives.yaml"
        # one line on the terminal per finished figure (the job's own stderr: shown under --quiet too, which
        # hides a message:); written into the command, not params, so that it never reruns a finished figure
        shell:
            "python -m negatives figure {params.figure} --config-json {params.config:q} --probes {input:q}"
            " --out {params.out:q} > {log:q} 2>&1"
            f" && echo {shown_line(figure)} >&2"
