"""Stage: MLflow (every MLflow call lives in client.py) and the report over a sweep's runs."""
