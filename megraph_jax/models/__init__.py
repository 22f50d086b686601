"""Flax NNX modules of ME-GraphAU."""
