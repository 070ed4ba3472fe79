"""Where reports go: Train V2's per-report INFO lines (metrics and pictures, ~45 kB) are kept off the console."""
import logging


def test_train_report_lines_are_quieted():
    from ray.train.v2._internal.execution import context as train_context
    from ray.train.v2._internal.execution import train_fn_utils

    from trainables.distributed import make_context

    # workers: a logger named after its file; local mode: train_fn_utils' module logger
    loggers = [logging.getLogger(train_context.__file__), logging.getLogger(train_fn_utils.__name__)]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)                    # as if a worker's root logger let INFO through
        assert logger.isEnabledFor(logging.INFO)
    make_context("local", 0)
    for logger in loggers:
        assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
