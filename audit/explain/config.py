"""Explanation settings: the `[explain]` table of the audit config.

Defaults are sized for a 2-core CPU: on the demo (64 px images, tiny model) the whole
explanation step takes well under a minute; at 224 px with a full MobileNetV2 count roughly
(shap_max_evals + lime_num_samples + 4 x 2 x (faithfulness_steps + 1)) forward passes per
selected image, plus the sanity and stability re-runs.

Code reads the validated table as `ExplainOptions` (typed, frozen: `opts.n_boot`).
"""

from __future__ import annotations

from collections.abc import Mapping

from audit.options import build_options, options_type

EXPLAIN_DEFAULTS = {
    "methods": ["gradcam", "shap", "lime"],  # run in this order; see audit.explain registry
    # Images per dataset (seeded): per true class, this many correct and misclassified ones,
    # plus the most confident errors not already picked.
    "correct_per_class": 1,
    "errors_per_class": 1,
    "most_confident_errors": 2,
    # Images per model call for SHAP, LIME and faithfulness: on 2 cores MobileNetV2 at 224 px
    # runs fastest per image at 32-64 (128 is 1.6x slower per image and needs 3 GB).
    "batch_size": 64,
    "gradcam_batch_size": 32,      # images per gradient tape
    "gradcam_min_grid": 4,         # feature-map side at least this many cells; see gradcam.py
    "shap_max_evals": 300,         # model calls per image (Partition explainer budget)
    "shap_batch_size": 64,         # masked images per Owen-recursion step
    "shap_blur_fraction": 0.07,    # SHAP masking blur kernel, fraction of the side (16 px @224)
    "lime_num_samples": 300,       # perturbed images per image
    "lime_batch_size": 64,         # perturbed images per model call (the library's default: 10)
    "lime_segments": 50,           # SLIC superpixels (about)
    "faithfulness_steps": 16,      # deletion/insertion steps
    "faithfulness_baseline": "blur",  # "blur" (blurred copy) or "mean" (mean colour)
    "faithfulness_blur_fraction": 0.07,
    # Flag a method unless the 95% interval of its (insertion - deletion) AUC gain over random
    # maps lies above this.
    "faithfulness_min_gain": 0.0,
    "random_grid": 8,              # random-map lattice (smooth random baseline maps)
    "n_boot": 200,                 # bootstrap resamples for the gain interval
    "sanity": True,                # model-randomisation check
    "sanity_methods": ["gradcam", "shap", "lime"],
    "sanity_max_images": 4,        # per dataset (the first selected images)
    "sanity_reinit_layers": 9,     # weighted layers re-initialised from the top (see sanity.py)
    "sanity_max_correlation": 0.5,  # flag a method whose maps correlate more than this
    "stability": True,             # clean vs corrupted maps
    "stability_methods": ["gradcam"],  # add "shap", "lime" when the budget allows
    "stability_corruptions": ["gaussian_noise", "defocus_blur", "stain_shift"],
    "stability_severity": 2,
    "stability_min_correlation": 0.3,  # flag a method whose maps correlate less than this
    "artifact_size": 128,          # side of images and maps stored in the npz (<= input size)
}

# The `[explain]` table read as typed, frozen options (audit.options.options_type).
ExplainOptions = options_type("ExplainOptions", EXPLAIN_DEFAULTS)


def explain_options(table: Mapping | ExplainOptions) -> ExplainOptions:
    """The validated `[explain]` table (config["explain"]) as ExplainOptions; options pass
    through unchanged."""
    return table if isinstance(table, ExplainOptions) else build_options(ExplainOptions, table)


def explain_limits() -> dict:
    """Ranges and choices of the `[explain]` keys (see audit.options)."""
    from audit.corruptions import CORRUPTIONS, SEVERITIES
    from audit.explain import load_builtin_explainers
    from audit.explain.faithfulness import BASELINES
    from audit.options import between, count, fraction, one_of, subset_of

    methods = tuple(load_builtin_explainers())
    return {
        "methods": subset_of(*methods), "correct_per_class": count(0),
        "errors_per_class": count(0), "most_confident_errors": count(0), "batch_size": count(1),
        "gradcam_batch_size": count(1), "gradcam_min_grid": count(1), "shap_max_evals": count(10),
        "shap_batch_size": count(1), "shap_blur_fraction": fraction(open_low=True),
        "lime_num_samples": count(10), "lime_batch_size": count(1), "lime_segments": count(2),
        "faithfulness_steps": count(2), "faithfulness_baseline": one_of(*BASELINES),
        "faithfulness_blur_fraction": fraction(open_low=True),
        "faithfulness_min_gain": between(-1.0, 1.0), "random_grid": count(2),
        "n_boot": count(10), "sanity_methods": subset_of(*methods),
        "sanity_max_images": count(1), "sanity_reinit_layers": count(1),
        "sanity_max_correlation": between(-1.0, 1.0), "stability_methods": subset_of(*methods),
        "stability_corruptions": subset_of(*CORRUPTIONS), "stability_severity": one_of(*SEVERITIES),
        "stability_min_correlation": between(-1.0, 1.0), "artifact_size": count(8),
    }
