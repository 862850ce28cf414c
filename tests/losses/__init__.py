"""Tests of negatives.losses, one file per loss module."""
