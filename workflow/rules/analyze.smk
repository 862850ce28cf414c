# Section 4 analyses (docs/INTERFACES.md): the class-by-class WordNet
# similarity of a dataset, and the query x negative pairs of a trained run.


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


rule analyze:
    input:
        data=f"{R}/data/{{dataset}}/data.pt",
        checkpoint=f"{R}/{{dataset}}/{{method}}/{{policy}}/t{{temperature}}/seed{{seed}}/checkpoint.pt",
        similarity=f"{R}/data/{{dataset}}/wordnet_similarity.tsv",
    output:
        pairs=f"{R}/{{dataset}}/{{method}}/{{policy}}/t{{temperature}}/seed{{seed}}/analysis/pairs.parquet",
    params:
        settings=settings("analysis"),
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
