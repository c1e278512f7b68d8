"""CellAudit: explainability and model audit for white-blood-cell image classifiers.

    import audit
    result = audit.run("model.h5", heldout="data/test", shifted={"lab_b": "data/lab_b"},
                       classes_from="data/train", preprocess="unit", resize="stretch")
    result.status                     # PASS, WARN, FAIL or ERROR
    result.findings[0].text           # the largest measured cause of the accuracy gap
    result                            # in Jupyter: the report, inline
    result.save("audit-out")          # audit.json, artifacts/ and report.html, as `audit run`
    audit.predict("model.h5", "new_images/", audit=result)
    audit.gate(baseline_result, result).passed

Importing `audit` does not import TensorFlow; the functions do when they need it.
"""

from audit.api import gate, predict, run
from audit.errors import InputError, UsageError
from audit.results import AuditResult, CheckResult, Finding, Status

__all__ = ["run", "predict", "gate", "AuditResult", "CheckResult", "Finding", "Status",
           "UsageError", "InputError"]
