"""Training: one run (``experiment``), one stage (``stage``: train state, jitted steps, epoch loop), the optimizer,
monitoring, preemption, initial weights, typed results and their tables."""
