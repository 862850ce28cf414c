"""The run-time infrastructure every stage shares: atomic writes
(:mod:`.atomic`), preemption-safe checkpoints (:mod:`.checkpoint`), one GPU
per process (:mod:`.gpus`), the allocator setting of a process
(:mod:`.memory`), host-to-device copies that do not stall the device
(:mod:`.transfer`), and the SLURM status check (:mod:`.cluster`).  Nothing here
knows any science."""
