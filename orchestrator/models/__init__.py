"""Taking a trained student away from a sweep: resolving a model URI, running it on images (`predict`) and
scoring it on a dataset split (`evaluate`), and the MLflow pyfunc flavour that loads it."""
