"""``bioscale report``: the store as tables next to the papers' numbers."""

from bioscale.report.frame import JOB_COLUMNS, load_frame
from bioscale.report.render import FORMATS, aggregate, render

__all__ = ["FORMATS", "JOB_COLUMNS", "aggregate", "load_frame", "render"]
