"""Experiment configs: each file's get_config() is one experiment (see default.py for every knob)."""
