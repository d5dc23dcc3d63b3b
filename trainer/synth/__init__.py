"""Synthetic CT studies with known truth: analytic and real-backed phantoms, lesion insertion, report writing.

Light on purpose (numpy/scipy only, no torch): the CLI `totalfm synth` and the tests import it without the training
stack. Entry points: ``trainer.synth.study.generate_study`` and ``trainer.synth.report.write_report``.
"""

GENERATOR_VERSION = "0.1.0"
