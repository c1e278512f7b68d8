"""Explanations: Grad-CAM, SHAP and LIME behind one interface, with evidence that the maps mean
something (faithfulness, model-randomisation sanity, cell focus, stability).

    from audit.explain import load_builtin_explainers
    registry = load_builtin_explainers()          # {"gradcam": GradCAM, "shap": ..., "lime": ...}
    maps = registry["gradcam"](model, seed=0).explain(images, targets)

`audit.explain.runner.explain_audit(ctx)` runs everything for `audit run`. Importing this
package stays cheap (no TensorFlow): method modules load on first use.
"""

from __future__ import annotations

import importlib

__all__ = ["load_builtin_explainers", "EXPLAINER_MODULES"]

# Registry order = the order methods are run and shown.
EXPLAINER_MODULES = ("gradcam", "shap_partition", "lime_segments")


def load_builtin_explainers() -> dict:
    """Import the method modules (they register themselves); returns name -> class."""
    from audit.explain.base import EXPLAINERS

    for module in EXPLAINER_MODULES:
        importlib.import_module(f"audit.explain.{module}")
    return EXPLAINERS
