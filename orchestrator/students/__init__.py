"""The student's starting point: its encoder pretrained once per dataset and student (encoder.py), before any
trial, on the dataset's source corpus (pretrain_task.py runs it)."""
