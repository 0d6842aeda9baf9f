"""Analyses of an evaluation run: delayed generalization, concept vectors, attention heads, report.

``analyze(splits_path, eval_dir, out_dir)`` runs them all and returns the path of ``report.html``;
the modules can also be used on arrays directly:

* :mod:`.generalization` — accuracy curves per exposure group, threshold steps, delays, per-pair lags;
* :mod:`.concepts` — grouped-CV probes and the dimension of good − bad, before vs after;
* :mod:`.heads` — critical → context attention per layer × head, its concentration, top heads;
* :mod:`.io` — reader of the splits table and the evaluation directory;
* :mod:`.figures`, :mod:`.report` — PNG figures and the self-contained HTML report;
* :mod:`.synthetic` — a synthetic evaluation output with planted answers.
"""

from .io import EvalData, load_eval
from .pipeline import analyze

__all__ = ["EvalData", "analyze", "load_eval"]
