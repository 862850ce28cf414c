"""Pretraining: a run's settings, seeds and encoder (:mod:`.settings`), and the
preemption-safe training loop (:mod:`.pretrain`)."""
