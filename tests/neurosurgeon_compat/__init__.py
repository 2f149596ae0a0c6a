"""NeuroSurgeon test files, ported (see port.py), run against modeopt_masks.compat.neurosurgeon."""
