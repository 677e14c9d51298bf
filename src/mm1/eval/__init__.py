"""Evaluation: benchmarks as YAML tasks, zero-/few-shot prompting, standard metrics, reports.

`evaluate(model, tasks, shots)` runs in-process (training calls it too); `mm1 eval MODEL --tasks ... --shots ...`
writes predictions, a summary and a report.  See `tasks.py` (task files), `fewshot.py` (prompts and the mode rule),
`metrics.py`, `harness.py`, `report.py` and `lmms_adapter.py` (lmms-eval).
"""

from mm1.eval.harness import evaluate

__all__ = ["evaluate"]
