"""Launching: sweeps (one after another or on Ray), multi-process start-up, TPU topologies and ahead-of-time
compilation for TPU slices."""
