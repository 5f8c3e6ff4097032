"""Baseline and check: the trusted picture of the kernel's code (baseline.py, store.py) and
the comparison that explains every changed byte by its owner or calls it tampering (check.py,
explain.py, owners.py, module_regions.py). Built from the surfaces, through what they export."""
