"""Brightness outliers per set: images much darker or brighter than the reference images.

A slide scanned with another lamp or exposure shifts every image's brightness; a few badly
exposed images hide among good ones. Per evaluated set: the share of images whose mean
brightness is more than `z` reference standard deviations from the reference mean, and the
model's accuracy on them.
"""

from __future__ import annotations

import numpy as np

from audit.checks.base import AuditContext, Check
from audit.results import CheckResult, Finding, Status


class BrightnessOutliers(Check):
    name = "brightness"
    description = "Images much darker or brighter than the reference images, per set"
    DEFAULTS = {"z": 3.0, "warn_share": 0.05, "fail_share": 0.20}

    def run(self, ctx: AuditContext) -> CheckResult:
        opts = self.options(ctx)   # typed, frozen: opts.z is a float
        reference = ctx.reference
        values = reference.outputs.properties["brightness"]   # computed once per image
        mean, sd = float(np.mean(values)), float(np.std(values)) or 1e-6
        sets, findings = {}, []
        for view in ctx.evaluated:
            z = (np.asarray(view.outputs.properties["brightness"]) - mean) / sd
            outlier = np.abs(z) > opts.z
            share = float(outlier.mean()) if len(z) else 0.0
            errors = float((~view.correct[outlier]).mean()) if outlier.any() else None
            sets[view.name] = {"n": len(z), "outliers": int(outlier.sum()), "share": share,
                               "error_rate_outliers": errors}
            if share > opts.warn_share:
                findings.append(Finding(
                    check=self.name, dataset=view.name, kind="brightness_outliers",
                    text=(f"{share:.0%} of {view.name} images are more than {opts.z:g} "
                          f"standard deviations from {reference.name}'s brightness."),
                    action=f"check the scanner exposure of {view.name}, or normalise brightness",
                    impact=share * (errors or 0.0), evidence={"share": share}))
        worst = max((d["share"] for d in sets.values()), default=0.0)
        status = (Status.FAIL if worst > opts.fail_share else
                  Status.WARN if worst > opts.warn_share else Status.PASS)
        return CheckResult(
            name=self.name, status=status, findings=findings,
            summary=f"at most {worst:.0%} of a set's images are brightness outliers",
            metrics={"reference": reference.name, "mean": mean, "sd": sd, "z": opts.z,
                     "datasets": sets})
