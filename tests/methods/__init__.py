"""Tests of negatives.methods, one file per method, and how a run builds its method."""
