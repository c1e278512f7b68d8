"""Report section 14: Recommendations, limitations and reporting checklist."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reports.format import finite
from reports.sections.common import lookup
from reports.sections.registry import register_section, registered


def recommendations(findings: Sequence[Mapping]) -> list[dict]:
    """The findings' actions, deduplicated, in rank order, with what prompted each."""
    out: dict[str, dict] = {}
    for rank, f in enumerate(findings, 1):
        action = (f.get("action") or "").strip()
        if not action:
            continue
        key = action.lower().rstrip(".")
        entry = out.setdefault(key, {"action": action[0].upper() + action[1:], "ranks": [],
                                     "checks": [], "datasets": [],
                                     "because": (f.get("text") or "").rstrip(". ")})
        entry["ranks"].append(rank)
        for field, value in (("checks", f.get("check")), ("datasets", f.get("dataset"))):
            if value and value not in entry[field]:
                entry[field].append(value)
    return list(out.values())


def limitations(audit: Mapping) -> list[str]:
    """What this audit cannot tell, computed from what it had and what it measured."""
    out = []
    datasets = audit.get("datasets") or {}
    roles = [d.get("role") for d in datasets.values()]
    for name, d in (audit.get("checks") or {}).items():
        if d.get("status") in ("ERROR", "SKIP"):
            out.append(f"The {name} check was not computed ({d.get('status')}): "
                       f"{d.get('error') or d.get('summary')}")
    if "shifted" not in roles:
        out.append("No shifted dataset (another site, scanner, stain or time) was evaluated: "
                   "performance on data unlike the reference is unknown.")
    if "train" not in roles:
        out.append("The training set was not given to the audit: leakage between training and "
                   "test images, and drift from the training data, were not checked against it.")
    perf = lookup(audit, "checks", "performance", "metrics", "datasets", default={}) or {}
    for name, d in datasets.items():
        if d.get("role") == "train":
            continue
        acc = lookup(perf, name, "accuracy") or {}
        if finite(acc.get("low")) and finite(acc.get("high")) and acc["high"] - acc["low"] > 0.1:
            out.append(f"{name} has {d.get('n_images')} images: its accuracy interval spans "
                       f"{100 * (acc['high'] - acc['low']):.0f} points, too wide for a precise "
                       "estimate.")
        if not d.get("has_groups"):
            out.append(f"{name} records no patient/slide groups: intervals treat images as "
                       "independent, and are too narrow if several images share a patient.")
        absent = [c for c, k in (d.get("class_counts") or {}).items() if not k]
        if absent:
            out.append(f"{name} has no images of {', '.join(absent)}: the model's performance "
                       "on these classes there is unknown.")
        skipped = d.get("skipped") or []
        if skipped:
            out.append(f"{len(skipped)} unreadable file(s) in {name} were left out.")
    if not lookup(audit, "model", "metadata", "intended_use"):
        out.append("The model file does not state its intended clinical use, population or "
                   "users; whether the evaluated sets represent them needs human judgement.")
    if lookup(audit, "checks", "label_issues", "status") in ("PASS", "WARN", "FAIL"):
        out.append("Likely label errors are found only where the model confidently disagrees "
                   "with a label: systematic labelling conventions shared by training and test "
                   "data stay invisible.")
    else:
        out.append("Labels are taken as given: the audit cannot detect systematic labelling "
                   "errors shared by training and test data.")
    out.append("The referral threshold's guarantee holds on data like the reference; under "
               "shift only measured figures apply, and the safety flags catch only what makes "
               "an image look unlike the reference.")
    return out


# Items of the CLAIM (2020) and TRIPOD+AI (2024) checklists, paraphrased, mapped to the report
# section that answers them; None = needs human input (not in any audit input).
CHECKLIST: tuple[tuple[str, str, str, str | None], ...] = (
    ("CLAIM", "3", "Intended use and clinical role of the AI", "model-card"),
    ("CLAIM", "7", "Data sources", "datasets"),
    ("CLAIM", "8", "Eligibility criteria of cases", None),
    ("CLAIM", "9", "Data pre-processing steps", "model-card"),
    ("CLAIM", "12", "De-identification methods", None),
    ("CLAIM", "13", "How missing data were handled", "datasets"),
    ("CLAIM", "14-18", "Ground truth: definition, annotators, tools, inter-rater variability", None),
    ("CLAIM", "19", "Intended sample size and how it was determined", None),
    ("CLAIM", "20", "How data were assigned to partitions, with proportions", "model-card"),
    ("CLAIM", "21", "Level at which partitions are disjoint", "leakage"),
    ("CLAIM", "22", "Detailed description of the model", "model-card"),
    ("CLAIM", "23", "Software libraries and versions", "reproducibility"),
    ("CLAIM", "24", "Initialisation of model parameters", "model-card"),
    ("CLAIM", "25", "Training approach: augmentation, hyper-parameters", "model-card"),
    ("CLAIM", "26", "Method of selecting the final model", "model-card"),
    ("CLAIM", "28", "Metrics of model performance", "performance"),
    ("CLAIM", "29", "Statistical measures of uncertainty (confidence intervals)", "performance"),
    ("CLAIM", "30", "Robustness or sensitivity analysis", "robustness"),
    ("CLAIM", "31", "Explainability methods and how they were validated", "explanations"),
    ("CLAIM", "32", "Validation on external data", "shift"),
    ("CLAIM", "34", "Demographic and clinical characteristics of cases", None),
    ("CLAIM", "35", "Performance on all data partitions", "performance"),
    ("CLAIM", "37", "Failure analysis of incorrectly classified cases", "errors"),
    ("CLAIM", "38", "Study limitations", "recommendations"),
    ("CLAIM", "40-42", "Registration, protocol, funding", None),
    ("TRIPOD+AI", "5", "Data sources and dates", "datasets"),
    ("TRIPOD+AI", "6", "Participants: setting, eligibility", None),
    ("TRIPOD+AI", "7", "Data preparation and pre-processing", "model-card"),
    ("TRIPOD+AI", "8", "Outcome (reference standard) definition and assessment", None),
    ("TRIPOD+AI", "10", "Sample size", "datasets"),
    ("TRIPOD+AI", "12", "Analytical methods: partitioning, model, hyper-parameters, measures",
     "model-card"),
    ("TRIPOD+AI", "13", "Class imbalance handling", "model-card"),
    ("TRIPOD+AI", "14", "Fairness across subgroups", None),
    ("TRIPOD+AI", "15", "Model output and decision thresholds", "selective"),
    ("TRIPOD+AI", "16", "Differences between development and evaluation data", "shift"),
    ("TRIPOD+AI", "18", "Open science: code and data availability", "reproducibility"),
    ("TRIPOD+AI", "20", "Participant flow and characteristics per dataset", "datasets"),
    ("TRIPOD+AI", "22", "Model specification", "model-card"),
    ("TRIPOD+AI", "23", "Model performance with uncertainty, including subgroups", "performance"),
    ("TRIPOD+AI", "23", "Model performance: calibration of predicted probabilities",
     "calibration"),
    ("TRIPOD+AI", "26", "Limitations", "recommendations"),
    ("TRIPOD+AI", "27", "Usability: poor-quality input, user interaction", "safety"),
)


def reporting_checklist(available: Mapping[str, bool], *,
                        headings: Mapping[str, str] | None = None) -> list[dict]:
    """Checklist rows: answered in section N, not computed in this run, or needs human input.
    `headings` ({name: "N. title"}) are the report's; by default the registered sections'."""
    if headings is None:
        headings = {s.name: f"{i}. {s.title}" for i, s in enumerate(registered(), 1)}
    rows = []
    for guideline, item, text, anchor in CHECKLIST:
        if anchor is None:
            state, where = "human", ""
        elif available.get(anchor, False):
            state, where = "answered", headings[anchor]
        else:
            state, where = "missing", headings[anchor]
        rows.append({"guideline": guideline, "item": item, "text": text, "state": state,
                     "anchor": anchor or "", "where": where})
    return rows


def recommendations_section(audit: Mapping, assets=None, *, available=None,
                            headings=None) -> dict:
    """Built after the other sections: the checklist says which of them were computed."""
    return {"available": True, "reason": "",
            "recommendations": recommendations(audit.get("findings") or []),
            "limitations": limitations(audit),
            "checklist": reporting_checklist(available or {}, headings=headings)}


register_section("recommendations", "Recommendations, limitations and reporting checklist",
                 recommendations_section, "_recommendations.html.j2", order=140,
                 reads_others=True)
