"""
Evaluation imports: BEIR-layout loading, runs through txtai in three modes, ranx metrics and reports
"""

from .beir import BEIR
from .metrics import METRICS, Metrics
from .report import Report
from .run import MODES, Run, evaluate
