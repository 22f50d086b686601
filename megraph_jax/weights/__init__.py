"""Mapping of PyTorch state_dicts (official ME-GraphAU, torchvision, Swin) onto our NNX modules."""
