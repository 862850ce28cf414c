# A finished run is kept whatever else changes (negatives.training.identity):
# a job run again for a finished run puts its kept files back, and data.pt
# is ancient here, since a data.pt prepared again is compared by its digest
# when a run resumes or is evaluated, not by its date
rule pretrain:
    input:
        data=ancient(f"{R}/data/{{dataset}}/data.pt"),
    output:
        checkpoint=f"{R}/{{dataset}}/{{method}}/{{policy}}/t{{temperature}}/seed{{seed}}/checkpoint.pt",
        train_log=f"{R}/{{dataset}}/{{method}}/{{policy}}/t{{temperature}}/seed{{seed}}/train_log.csv",
    params:
        settings=identity(),
        out=subpath(output.checkpoint, parent=True),
    threads: config["pretrain"]["threads"]
    priority: FIRST_FIGURE_PRIORITY
    resources:
        mem_mb=per_attempt(8000 * config["pretrain"]["processes"]),  # each process holds the data
        runtime=240,  # a retry resumes from last.pt: the same time goes on from there
        device=config["pretrain"]["device"],  # outside the identity: compared as the device type it resolves to
        knn_monitor=config["pretrain"]["knn_monitor"],  # log only
        knn_monitor_every=config["pretrain"]["knn_monitor_every"],
        share_queries=config["pretrain"]["share_queries"],  # log only
        log_every=str(config["pretrain"]["log_every"]),  # log only; a string: Snakemake rounds a float resource
        # log only (snapshots/ for rule dynamics: no declared output, or every finished run would train again)
        dynamics_epochs=json.dumps(config["pretrain"]["dynamics_epochs"], separators=(",", ":")),
        jobs_per_gpu=config["jobs_per_gpu"],  # speed only: the GPU locks' slots
        **PRETRAIN_RESOURCES,
    log:
        "logs/{dataset}/{method}/{policy}/t{temperature}/seed{seed}/pretrain.log",
    conda:
        "../../envs/negatives.yaml"
    # threads, processes, nodes and compile are part of the run: they come in
    # --settings, not as flags (Snakemake lowers {threads} to --cores)
    shell:
        "python -m negatives pretrain --data {input.data:q} --method {wildcards.method:q}"
        " --policy {wildcards.policy:q} --temperature {wildcards.temperature} --seed {wildcards.seed}"
        " --settings {params.settings:q} --device {resources.device} --knn-monitor {resources.knn_monitor}"
        " --knn-monitor-every {resources.knn_monitor_every} --share-queries {resources.share_queries}"
        " --log-every {resources.log_every} --dynamics-epochs {resources.dynamics_epochs:q}"
        " --jobs-per-gpu {resources.jobs_per_gpu}"
        " --out {params.out:q} > {log:q} 2>&1"


# the untrained encoder of each seed: the floor every figure is read against
rule random_init:
    input:
        data=ancient(f"{R}/data/{{dataset}}/data.pt"),
    output:
        checkpoint=f"{R}/{{dataset}}/{{method}}/random-init/seed{{seed}}/checkpoint.pt",
    params:
        settings=identity(untrained=True),
        out=subpath(output.checkpoint, parent=True),
    threads: 1
    priority: FIRST_FIGURE_PRIORITY
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(10),
        cpus_per_task=cpus,
        gpu=0,
    log:
        "logs/{dataset}/{method}/random-init/seed{seed}/init.log",
    conda:
        "../../envs/negatives.yaml"
    shell:
        "python -m negatives init --data {input.data:q} --method {wildcards.method:q} --seed {wildcards.seed}"
        " --settings {params.settings:q} --threads {threads} --out {params.out:q} > {log:q} 2>&1"
