# keys of datasets.NAME that prepare takes as its own arguments; the rest go to --settings
PREPARE_ARGUMENTS = ("root", "download", "train_images", "test_images")


rule prepare:
    output:
        data=f"{R}/data/{{dataset}}/data.pt",
        classes=f"{R}/data/{{dataset}}/classes.tsv",
    params:
        # one folder reached through another path is the same data
        root=lambda wildcards: os.path.realpath(os.path.expanduser(config["datasets"][wildcards.dataset]["root"])),
        train_images=dataset_option("train_images"),
        test_images=dataset_option("test_images"),
        # the format's own keys (storage, labels, image_size, ...): negatives.data.prepare(**settings);
        # stream_above_gb only where it can choose the storage
        settings=lambda wildcards: json.dumps(
            {k: v for k, v in config["datasets"][wildcards.dataset].items()
             if k not in PREPARE_ARGUMENTS and (k != "stream_above_gb" or may_stream(wildcards.dataset))},
            sort_keys=True,
        ),
        out=subpath(output.data, parent=True),
    threads: 1
    resources:
        # only fetches files that are missing: never a reason to prepare the data again
        download=lambda wildcards: int(config["datasets"][wildcards.dataset]["download"]),
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
        " --settings {params.settings:q} --download {resources.download} > {log:q} 2>&1"
