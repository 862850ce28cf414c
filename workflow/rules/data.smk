# keys of datasets.NAME that prepare takes as its own arguments; the rest go to --settings
PREPARE_ARGUMENTS = ("root", "download", "train_images", "test_images")


rule prepare:
    output:
        data=f"{R}/data/{{dataset}}/data.pt",
        classes=f"{R}/data/{{dataset}}/classes.tsv",
    params:
        root=dataset_option("root"),
        train_images=dataset_option("train_images"),
        test_images=dataset_option("test_images"),
        download=lambda wildcards: "--download" if config["datasets"][wildcards.dataset]["download"] else "",
        # the format's own keys (storage, labels, image_size, ...): negatives.data.prepare(**settings)
        settings=lambda wildcards: json.dumps(
            {k: v for k, v in config["datasets"][wildcards.dataset].items() if k not in PREPARE_ARGUMENTS},
            sort_keys=True,
        ),
        out=subpath(output.data, parent=True),
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(30),
        cpus_per_task=cpus,
        gpu=0,
    log:
        "logs/data/{dataset}/prepare.log",
    conda:
        "../../envs/negatives.yaml"
    shell:
        "python -m negatives prepare --dataset {wildcards.dataset:q} --root {params.root:q}"
        " --out {params.out:q} --train-images {params.train_images} --test-images {params.test_images}"
        " --settings {params.settings:q} {params.download} > {log:q} 2>&1"
