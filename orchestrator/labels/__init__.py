"""Stage: OOD pseudo-labels: the job (what to label, its cache key), the Ray Data pipeline, the store, diagnostics."""
