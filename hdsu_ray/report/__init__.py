"""Reports a user reads: the method comparison of a run and the report of a sweep.

Both are rebuilt from the run's JSON alone (``hdsu-ray report DIR``). The paper's reported point
appears only as a labelled reference (:mod:`hdsu_ray.report.reference`).
"""

from hdsu_ray.report.comparison import write_comparison
from hdsu_ray.report.sweep import write_report as write_sweep_report

__all__ = ["write_comparison", "write_sweep_report"]
