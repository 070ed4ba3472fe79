"""Where reports go: Train V2's per-report INFO line (metrics and pictures, ~45 kB) is kept off the console."""
import logging


def test_train_report_lines_are_quieted():
    from ray.train.v2._internal.execution import context as train_context

    from trainables.distributed import _quiet_train_reports

    logger = logging.getLogger(train_context.__file__)   # Train names this logger after its file
    logger.setLevel(logging.DEBUG)                        # as if a worker's root logger let INFO through
    assert logger.isEnabledFor(logging.INFO)
    _quiet_train_reports()
    assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
