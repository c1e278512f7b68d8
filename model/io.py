"""Save a classifier together with its metadata, and read that metadata back.

The metadata travels inside the `.keras` archive (a zip) as `cellaudit.json`, so the model
file alone says what it is: its input contract (class names, input size, resize, scaling),
training data fingerprint, split manifest, hyper-parameters, seed, library versions and
history. Loading a model of any format with its contract is `model.loaded.load_model`.
"""

from __future__ import annotations

import json
import os
import platform
import zipfile
from pathlib import Path

from audit.atomic import atomic_path
from audit.errors import InputError

__all__ = ["save_model", "read_metadata", "model_hash", "library_versions", "METADATA_FORMAT"]

METADATA_FORMAT = "cellaudit-model/1"
_MEMBER = "cellaudit.json"
_REQUIRED = ("class_names", "input_size")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("cellaudit", "tensorflow", "keras", "numpy", "scikit-learn", "shap", "lime",
                    "pillow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    if "tensorflow" not in versions:
        try:
            versions["tensorflow"] = version("tensorflow-cpu")
        except PackageNotFoundError:
            pass
    return versions


def save_model(model, path: str | os.PathLike, metadata: dict) -> Path:
    """Write `model` and `metadata` to one `.keras` file, atomically."""
    path = Path(path)
    if path.suffix != ".keras":
        raise InputError(f"model path '{path}' must end in .keras")
    missing = [k for k in _REQUIRED if k not in metadata]
    if missing:
        raise ValueError(f"metadata lacks {missing}")
    metadata = {"format": METADATA_FORMAT, **metadata}
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(_MEMBER, json.dumps(metadata, indent=2, allow_nan=False))
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The CellAudit metadata inside a `.keras` model file, without loading TensorFlow."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model '{path}' does not exist; expected a .keras file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise InputError(f"model '{path}' is not a Keras 3 .keras archive (no config.json)")
            if _MEMBER not in names:
                raise InputError(f"model '{path}' has no CellAudit metadata (not saved by "
                                 "`audit train`)")
            data = json.loads(archive.read(_MEMBER))
    except zipfile.BadZipFile as exc:
        raise InputError(f"model '{path}' is not a .keras file (not a zip archive)") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"model '{path}': metadata is not valid JSON: {exc}") from exc
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise InputError(f"model '{path}': metadata lacks {missing}")
    return data


def model_hash(path: str | os.PathLike) -> str:
    """SHA-256 of the model file (or SavedModel folder): the cache key for its outputs."""
    from model.formats import file_hash

    return file_hash(path)
