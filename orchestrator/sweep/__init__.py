"""Driver: a Ray Tune sweep: the space file, the pure plan, the driver, the results table."""
