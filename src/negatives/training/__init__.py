"""Pretraining: a run's settings, seeds and encoder (:mod:`.settings`); one
run's checks, launch and lock (:mod:`.pretrain`), what it trains with
(:mod:`.build`), and the preemption-safe epoch loop (:mod:`.loop`)."""
