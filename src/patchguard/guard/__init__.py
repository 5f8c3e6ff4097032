"""The guard: a daemon that re-checks the kernel at random moments and answers findings."""
