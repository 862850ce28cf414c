# one rule for trained runs ({policy}/t{temperature}/seed{seed}) and
# untrained ones (random-init/seed{seed}): {run} is the part between the
# method and probe.json
rule evaluate:
    input:
        data=f"{R}/data/{{dataset}}/data.pt",
        checkpoint=f"{R}/{{dataset}}/{{method}}/{{run}}/checkpoint.pt",
    output:
        probe=f"{R}/{{dataset}}/{{method}}/{{run}}/probe.json",
    wildcard_constraints:
        run=f"random-init/seed{SEED}|{NAME}/t{TEMPERATURE}/seed{SEED}",
    params:
        settings=settings("evaluate"),
    threads: config["evaluate"]["threads"]
    priority: FIRST_FIGURE_PRIORITY
    resources:
        mem_mb=per_attempt(8000),
        runtime=per_attempt(60),
        cpus_per_task=cpus,
        gpu=GPUS,
        jobs_per_gpu=config["jobs_per_gpu"],  # speed only: the GPU locks' slots
    log:
        "logs/{dataset}/{method}/{run}/evaluate.log",
    conda:
        "../../envs/negatives.yaml"
    shell:
        "python -m negatives evaluate --data {input.data:q} --checkpoint {input.checkpoint:q}"
        " --settings {params.settings:q} --threads {threads} --jobs-per-gpu {resources.jobs_per_gpu}"
        " --out {output.probe:q} > {log:q} 2>&1"
