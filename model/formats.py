"""Reading a model file in any of the formats people save Keras classifiers in.

    .keras          Keras 3 archive (with or without CellAudit metadata inside)
    .h5 / .hdf5     legacy HDF5 full model, as tf.keras 2.x (TensorFlow <= 2.15, or tf_keras)
                    writes it: what most notebooks saved
    directory       TensorFlow SavedModel (`model.export(...)`, `tf.saved_model.save`, tf.keras
                    2.x `model.save(dir)`): loaded for inference only, no layer graph

Every model is loaded in Keras' safe mode: a downloaded model cannot run arbitrary Python code
(Lambda layers holding pickled functions are refused).

Keras 3 reads most tf.keras 2.x HDF5 files, but not all of what a tf.keras 2.x MobileNetV2
notebook writes: BatchNormalization's `axis` saved as a one-element list, DepthwiseConv2D's
`groups`, and a nested backbone's single input/output saved as a one-element list (Keras
issue #20084: "Layer 'dense' expects 1 input(s), but it received 2"). Those exact differences
are mended in a temporary copy's config (the weights are not touched), and the mends are
recorded with the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from audit.errors import InputError

__all__ = ["detect_format", "load_keras_file", "load_saved_model", "file_hash", "FORMATS",
           "mend_legacy_config"]

FORMATS = ("keras", "h5", "savedmodel")
_H5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def detect_format(path: str | os.PathLike) -> str:
    """'keras', 'h5' or 'savedmodel', from the file's content (not only its name)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model '{path}' does not exist; expected a .keras or .h5 file or a "
                         "SavedModel folder")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise InputError(f"model '{path}' is a folder without saved_model.pb; expected a "
                         "TensorFlow SavedModel folder, a .keras or a .h5 file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head == _H5_SIGNATURE:
        return "h5"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "config.json" in archive.namelist():
                return "keras"
        raise InputError(f"model '{path}' is a zip archive but not a Keras 3 .keras model "
                         "(no config.json)")
    raise InputError(f"model '{path}' is not a model file: neither a .keras archive, an HDF5 "
                     ".h5 file nor a SavedModel folder")


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a model file, or of a SavedModel folder's files (names and contents)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def mend_legacy_config(config, notes: set[str]):
    """Mend, in place, the tf.keras 2.x config differences Keras 3 cannot read (module doc)."""
    if isinstance(config, dict):
        kind, inner = config.get("class_name"), config.get("config")
        if isinstance(inner, dict):
            axis = inner.get("axis")
            if kind in ("BatchNormalization", "LayerNormalization") and isinstance(axis, list) \
                    and len(axis) == 1:
                inner["axis"] = axis[0]
                notes.add(f"{kind} axis saved as a list")
            if kind == "DepthwiseConv2D" and inner.get("groups") == 1:
                del inner["groups"]
                notes.add("DepthwiseConv2D 'groups' argument")
            if kind in ("Functional", "Model"):
                for key in ("input_layers", "output_layers"):
                    value = inner.get(key)
                    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
                        inner[key] = value[0]
                        notes.add("nested model's single input/output saved as a list")
        for value in config.values():
            mend_legacy_config(value, notes)
    elif isinstance(config, list):
        for value in config:
            mend_legacy_config(value, notes)
    return config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_keras_file(path: str | os.PathLike, fmt: str) -> tuple[object, list[str]]:
    """(Keras model, notes) for a .keras or .h5 file, in safe mode, without compiling."""
    import keras

    import model.layers  # noqa: F401 - registers the custom layers a CellAudit model may hold

    path = Path(path)
    notes: set[str] = set()
    try:
        if fmt == "h5":
            with tempfile.TemporaryDirectory(prefix="cellaudit-h5-") as tmp:
                mended = Path(tmp) / "model.h5"
                shutil.copyfile(path, mended)
                _mend_h5(mended, notes)
                model = keras.saving.load_model(mended, compile=False, safe_mode=True)
        else:
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        detail = _first_line(exc)
        if "lambda" in detail.lower() and "safe" in detail.lower():
            raise InputError(f"model '{path}' holds a Lambda layer with Python code; it is "
                             "not loaded (safe mode): re-save the model without Lambda layers "
                             "or as a SavedModel") from exc
        raise InputError(f"cannot load model '{path}': {detail}") from exc
    if not isinstance(model, keras.Model):
        raise InputError(f"model '{path}' holds a {type(model).__name__}, not a Keras model")
    return model, [f"mended for Keras 3: {n}" for n in sorted(notes)]


def _mend_h5(path: Path, notes: set[str]) -> None:
    import h5py

    try:
        with h5py.File(path, "r+") as h5:
            raw = h5.attrs.get("model_config")
            if raw is None:
                raise InputError(f"model '{path.name}': this HDF5 file holds no model config "
                                 "(weights only, e.g. save_weights); save the full model "
                                 "with model.save('model.h5')")
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            mended = json.dumps(mend_legacy_config(json.loads(text), notes))
            if notes:
                h5.attrs["model_config"] = mended
    except OSError as exc:
        raise InputError(f"cannot read HDF5 model: {_first_line(exc)}") from exc


def load_saved_model(path: str | os.PathLike) -> tuple[object, str, tuple]:
    """(callable layer images -> outputs, endpoint name, input shape) of a SavedModel."""
    import keras
    import tensorflow as tf

    path = Path(path)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot load SavedModel '{path}': {_first_line(exc)}") from exc
    endpoints = [name for name in ("serve", "serving_default")
                 if name in getattr(loaded, "signatures", {}) or hasattr(loaded, name)]
    if not endpoints:
        raise InputError(f"SavedModel '{path}' has no 'serve' or 'serving_default' endpoint "
                         f"(signatures: {list(getattr(loaded, 'signatures', {}))})")
    signature = loaded.signatures.get("serving_default")
    specs = list(signature.structured_input_signature[1].values()) if signature is not None else []
    args = signature.structured_input_signature[0] if signature is not None else ()
    if len(specs) + len(args) != 1:
        raise InputError(f"SavedModel '{path}' has {len(specs) + len(args)} inputs; CellAudit "
                         "audits image classifiers with one image input")
    spec = (specs or list(args))[0]
    shape = tuple(spec.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise InputError(f"SavedModel '{path}' takes input of shape {shape}; expected (batch, "
                         "height, width, 3) RGB images")
    outputs = signature.structured_outputs
    if isinstance(outputs, dict) and len(outputs) != 1:
        raise InputError(f"SavedModel '{path}' has outputs {sorted(outputs)}; expected one "
                         "output of shape (batch, classes)")
    endpoint = endpoints[0]
    layer = keras.layers.TFSMLayer(str(path), call_endpoint=endpoint)
    return layer, endpoint, shape
