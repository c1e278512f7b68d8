"""The gap-factors check's engines. Factor transforms: each changes one property of a set of
images toward another set's statistics, fitted on seeded samples of the two sets (no labels).

| factor     | fitted on the two samples                        | transform                          |
|------------|--------------------------------------------------|------------------------------------|
| scale      | median white-cell area (`white_cell_mask`)       | zoom about the centre by sqrt(area ratio), within 0.5-2; a zoom-out fills the border with the image's border colour |
| background | the target's images with their cell filled in    | everything outside the (grown, feathered) cell mask replaced by a target background, recoloured into the source's colours and blurred to its focus |
| color      | Macenko stain vectors or Reinhard Lab statistics, at equal focus | `stain.py` transfer, set level |
| sharpness  | median half-resolution Laplacian-variance sharpness | Gaussian blur of the sharper set to the other's sharpness; a blurrier set is left as is, or unsharp-masked up to it with `allow_sharpen` |
| resolution | median native crop side and JPEG quality (files) | round trip through the target's pixel size and JPEG quality, when it has fewer pixels across the crop (below the model input) or stronger compression |

Transforms compose in that order (`IMAGE_FACTORS`): magnification and slide content, then
stain, focus and digitisation, the order of acquisition. Each is deterministic for a given
`seed` (only the background draws at random: which target background goes with which image),
uint8 in, uint8 out, batched. A factor that finds nothing to change is `identity` and returns
the images unchanged: scale and sharpness when the two samples do not differ (Mann-Whitney p >= 0.01 on cell area
or sharpness), resolution at the same pixel size and quality, background with no segmented
cells, sharpness on the blurrier side unless `allow_sharpen`.

- samples.py     what is measured on a seeded sample of one set (`SetSample`, sharpness, the
                 files' pixel size and JPEG quality)
- transforms.py  the factors (`Factor` and one class per factor), `FactorSet`, composition
- fitting.py     `fit_factors`: each factor fitted to move one sample toward the other
- subsets.py     every subset of the fitted factors applied to a subsample and predicted
- shapley.py     the game over those subsets (priors by reweighting) and its Shapley values
- stain.py       Reinhard and Macenko colour statistics and transfer (the colour factor)

The registered check (`audit.checks.gap_factors`) draws the samples from the run's pixel
store, fits both directions, predicts every combination and turns it into Shapley shares.
"""

from audit.gap_factors.fitting import fit_factors
from audit.gap_factors.samples import SetSample, estimate_jpeg_quality, native_side, sharpness
from audit.gap_factors.transforms import (
    COLOR_METHODS,
    FACTORS,
    IMAGE_FACTORS,
    BackgroundFactor,
    ColorFactor,
    Factor,
    FactorSet,
    ResolutionFactor,
    ScaleFactor,
    SharpnessFactor,
    apply_factors,
    step,
    zoom_images,
)

__all__ = ["IMAGE_FACTORS", "FACTORS", "COLOR_METHODS", "SetSample", "Factor", "ColorFactor",
           "ScaleFactor", "SharpnessFactor", "ResolutionFactor", "BackgroundFactor",
           "FactorSet", "fit_factors", "apply_factors", "step", "sharpness", "zoom_images",
           "estimate_jpeg_quality", "native_side"]
