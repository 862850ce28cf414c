# Section 4 analyses (docs/INTERFACES.md): the class-by-class WordNet
# similarity of a dataset, the query x negative pairs of a trained run, and
# Section 4 at every epoch a run saved (snapshots/, written by rule pretrain
# beside checkpoint.pt but no declared output of it: declared, they would
# make Snakemake train every finished run again).


rule similarity:
    input:
        classes=f"{R}/data/{{dataset}}/classes.tsv",
    output:
        similarity=f"{R}/data/{{dataset}}/wordnet_similarity.tsv",
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
        cpus_per_task=cpus,
        gpu=0,
    log:
        "logs/data/{dataset}/similarity.log",
    conda:
        "../../envs/negatives.yaml"
    shell:
        "python -m negatives similarity --classes {input.classes:q} --out {output.similarity:q} > {log:q} 2>&1"


#: analysis keys of rule dynamics alone: a change to them reanalyses no final checkpoint
DYNAMICS_ONLY = ("dynamics_queries", "dynamics_negatives")


rule analyze:
    input:
        data=f"{R}/data/{{dataset}}/data.pt",
        checkpoint=f"{R}/{{dataset}}/{{method}}/{{policy}}/t{{temperature}}/seed{{seed}}/checkpoint.pt",
        similarity=f"{R}/data/{{dataset}}/wordnet_similarity.tsv",
    output:
        pairs=f"{R}/{{dataset}}/{{method}}/{{policy}}/t{{temperature}}/seed{{seed}}/analysis/pairs.parquet",
    params:
        settings=settings("analysis", leave_out=DYNAMICS_ONLY),
    threads: 1
    resources:
        mem_mb=per_attempt(8000),
        runtime=per_attempt(30),
        cpus_per_task=cpus,
        gpu=GPUS,
        jobs_per_gpu=config["jobs_per_gpu"],  # speed only: the GPU locks' slots
    log:
        "logs/{dataset}/{method}/{policy}/t{temperature}/seed{seed}/analyze.log",
    conda:
        "../../envs/negatives.yaml"
    shell:
        "python -m negatives analyze --data {input.data:q} --checkpoint {input.checkpoint:q}"
        " --similarity {input.similarity:q} --settings {params.settings:q} --jobs-per-gpu {resources.jobs_per_gpu}"
        " --out {output.pairs:q} > {log:q} 2>&1"


# one row per saved epoch of the run (snapshots/epochNNNN.pt, else the final
# checkpoint as its last epoch); figure_dynamics(figure) lists a figure's
rule dynamics:
    input:
        data=f"{R}/data/{{dataset}}/data.pt",
        checkpoint=f"{R}/{{dataset}}/{{method}}/{{policy}}/t{{temperature}}/seed{{seed}}/checkpoint.pt",
        similarity=f"{R}/data/{{dataset}}/wordnet_similarity.tsv",
    output:
        dynamics=f"{R}/{{dataset}}/{{method}}/{{policy}}/t{{temperature}}/seed{{seed}}/analysis/dynamics.csv",
    params:
        settings=settings("analysis", leave_out=("queries", "negatives")),
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(30),
        cpus_per_task=cpus,
        gpu=GPUS,
        jobs_per_gpu=config["jobs_per_gpu"],  # speed only: the GPU locks' slots
    log:
        "logs/{dataset}/{method}/{policy}/t{temperature}/seed{seed}/dynamics.log",
    conda:
        "../../envs/negatives.yaml"
    shell:
        "python -m negatives dynamics --data {input.data:q} --checkpoint {input.checkpoint:q}"
        " --similarity {input.similarity:q} --settings {params.settings:q} --jobs-per-gpu {resources.jobs_per_gpu}"
        " --out {output.dynamics:q} > {log:q} 2>&1"
