rule pretrain:
    input:
        data=f"{R}/data/{{dataset}}/data.pt",
    output:
        checkpoint=f"{R}/{{dataset}}/{{method}}/{{policy}}/t{{temperature}}/seed{{seed}}/checkpoint.pt",
        train_log=f"{R}/{{dataset}}/{{method}}/{{policy}}/t{{temperature}}/seed{{seed}}/train_log.csv",
    params:
        settings=settings("pretrain"),
        out=subpath(output.checkpoint, parent=True),
    threads: config["pretrain"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=GPUS,
    log:
        "logs/{dataset}/{method}/{policy}/t{temperature}/seed{seed}/pretrain.log",
    conda:
        "../../envs/negatives.yaml"
    shell:
        "python -m negatives pretrain --data {input.data:q} --method {wildcards.method:q}"
        " --policy {wildcards.policy:q} --temperature {wildcards.temperature} --seed {wildcards.seed}"
        " --settings {params.settings:q} --out {params.out:q} > {log:q} 2>&1"


# the untrained encoder of each seed: the floor every figure is read against
rule random_init:
    input:
        data=f"{R}/data/{{dataset}}/data.pt",
    output:
        checkpoint=f"{R}/{{dataset}}/{{method}}/random-init/seed{{seed}}/checkpoint.pt",
    params:
        settings=settings("pretrain"),
        out=subpath(output.checkpoint, parent=True),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    log:
        "logs/{dataset}/{method}/random-init/seed{seed}/init.log",
    conda:
        "../../envs/negatives.yaml"
    shell:
        "python -m negatives init --data {input.data:q} --method {wildcards.method:q} --seed {wildcards.seed}"
        " --settings {params.settings:q} --out {params.out:q} > {log:q} 2>&1"
