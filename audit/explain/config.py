"""Explanation settings: the `[explain]` table of the audit config."""

EXPLAIN_DEFAULTS = {
    "methods": ["gradcam", "shap", "lime"],
    "correct_per_class": 1,
    "errors_per_class": 1,
    "most_confident_errors": 2,
    "shap_max_evals": 300,
    "lime_num_samples": 300,
    "lime_batch_size": 128,
    "faithfulness_steps": 16,
}
