"""Datasets: find images and labels on disk, check every file, stream them in batches.

A `Dataset` holds paths and labels, never pixels: images are decoded batch by batch by
`iter_batches`, so a set of any size is streamed. Decoding one file (`load_image`, the one
resizing function used by training, audit and explanations alike) is `audit.decode`.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audit.decode import check_file, load_image
from audit.errors import InputError
from audit.labels import LabelMap

__all__ = [
    "IMAGE_EXTENSIONS",
    "Dataset",
    "SkippedFile",
    "load_dataset",
    "load_image",  # defined in audit.decode; audit.data.load_image is the documented path
    "load_unlabelled",
    "iter_batches",
    "read_images",
    "scan_files",
    "fingerprint",
    "default_data_root",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# Files that are never images and never worth a warning.
_IGNORED_NAMES = {"manifest.csv", "site.json", "labels.csv", "readme.md", ".ds_store", "thumbs.db"}
# A class with fewer images than this gets a warning: its rates say little.
MIN_CLASS_IMAGES = 5
# An image whose shorter side is below this fraction of the model input is mostly invented
# by upscaling (3 x 3 pixels stretched to 224): warned about, refused with --strict.
MIN_SIDE_FRACTION = 0.25


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass(frozen=True)
class Dataset:
    """Images of one set: absolute paths, integer labels into `class_names`, optional groups.

    `sizes`: (N, 2) int64 (width, height) of each file as stored, read from its header by the
    scan that checked the files (None when the files were not checked): the per-image pass
    records them instead of opening every file again."""

    name: str
    root: str
    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    groups: tuple[str, ...] | None = None
    skipped: tuple[SkippedFile, ...] = ()
    fingerprint: str = field(default="")
    notes: tuple[str, ...] = ()
    sizes: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def relative_paths(self) -> list[str]:
        return [os.path.relpath(p, self.root) for p in self.paths]

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    def subset(self, indices: Sequence[int], *, name: str | None = None) -> Dataset:
        idx = np.asarray(indices, dtype=int)
        paths = tuple(self.paths[i] for i in idx)
        groups = tuple(self.groups[i] for i in idx) if self.groups is not None else None
        labels = self.labels[idx]
        return Dataset(
            name=name or self.name,
            root=self.root,
            paths=paths,
            labels=labels,
            class_names=self.class_names,
            groups=groups,
            skipped=self.skipped,
            fingerprint=fingerprint(self.root, paths, labels, self.class_names),
            sizes=self.sizes[idx] if self.sizes is not None else None,
        )

    def describe(self) -> dict:
        """JSON-able summary recorded wherever the dataset is used."""
        return {
            "name": self.name,
            "root": self.root,
            "n_images": len(self),
            "class_counts": self.class_counts(),
            "has_groups": self.groups is not None,
            "n_groups": len(set(self.groups)) if self.groups is not None else None,
            "fingerprint": self.fingerprint,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "notes": list(self.notes),
        }


def default_data_root() -> Path:
    """Where the shared real-image data lives: $CELLAUDIT_DATA, else ../shared/data."""
    return Path(os.environ.get("CELLAUDIT_DATA", "../shared/data")).resolve()


def fingerprint(root: str, paths: Sequence[str], labels: np.ndarray, class_names: Sequence[str]) -> str:
    """SHA-256 over relative path, file size and label name of every image, in order."""
    digest = hashlib.sha256()
    for path, label in zip(paths, labels, strict=True):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        size = os.path.getsize(path)
        digest.update(f"{rel}\t{size}\t{class_names[int(label)]}\n".encode())
    return digest.hexdigest()


def scan_files(paths: Sequence[str], *, max_workers: int = 4
               ) -> list[tuple[str | None, tuple[int, int] | None]]:
    """(why the file cannot be used or None, its (width, height)) per path, in order: what
    `load_dataset` skips and what it warns about."""
    # Pillow releases the GIL while decoding, so threads give real parallelism here.
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(check_file, paths, chunksize=16))


def _folder_entries(root: Path) -> tuple[list[tuple[str, str, str | None]], list[SkippedFile],
                                         list[str]]:
    """(path, source label, group) for every file under class folders of `root`, the
    unusable files, and the class folder names."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise InputError(
            f"dataset folder '{root}' has no class sub-folders; expected one folder per class "
            "(e.g. '{root}/neutrophil/*.jpg') or a CSV manifest with columns path,label[,group]"
        )
    entries, skipped = [], []
    for class_dir in class_dirs:
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if name.startswith(".") or name.lower() in _IGNORED_NAMES:
                    continue
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    skipped.append(SkippedFile(path, "not an image file (extension not in "
                                                     f"{', '.join(IMAGE_EXTENSIONS)})"))
                    continue
                entries.append((path, class_dir.name, None))
    return entries, skipped, [d.name for d in class_dirs]


def _manifest_entries(manifest: Path) -> list[tuple[str, str, str | None]]:
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in columns or "label" not in columns:
                raise InputError(
                    f"manifest '{manifest}' must have a header with columns path,label[,group]; "
                    f"received {reader.fieldnames}"
                )
            reader.fieldnames = columns
            entries = []
            for line_no, row in enumerate(reader, start=2):
                path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if not path or not label:
                    raise InputError(f"manifest '{manifest}' line {line_no}: empty path or label")
                if not os.path.isabs(path):
                    path = str(manifest.parent / path)
                group = (row.get("group") or "").strip() or None
                entries.append((path, label, group))
    except UnicodeDecodeError as exc:
        raise InputError(f"manifest '{manifest}' is not UTF-8 text: {exc.reason}") from exc
    return entries


def load_dataset(
    source: str | os.PathLike,
    *,
    name: str | None = None,
    label_map: LabelMap | None = None,
    class_names: Sequence[str] | None = None,
    strict: bool = False,
    check_files: bool = True,
    input_size: int | None = None,
    scan: Callable[[Sequence[str]], list[tuple[str | None, tuple[int, int] | None]]] | None = None,
) -> Dataset:
    """Load a class-per-folder directory or a CSV manifest (path,label[,group]).

    Source labels pass through `label_map` (rename or drop). With `class_names` (e.g. the
    model's classes) every remaining label must be one of them, else `InputError` lists the
    unknown ones; without, the sorted set of labels found becomes the class list.
    Unreadable files are skipped with a warning and listed in `Dataset.skipped`, or with
    `strict=True` raise `InputError`. So are, as warnings kept in `Dataset.notes`: a class
    folder with no usable image, a class with fewer than `MIN_CLASS_IMAGES` images, and
    (with `input_size`) images whose shorter side is under a quarter of the model input.
    `scan`: how the files are checked (default `scan_files`; an engine may spread it over a
    cluster, with the same results).
    """
    source_path = Path(source).expanduser()
    if not source_path.exists():
        raise InputError(f"dataset '{source}' does not exist; expected a folder or a CSV manifest")
    label_map = label_map or LabelMap()
    if source_path.is_dir():
        root = source_path.resolve()
        entries, skipped, folders = _folder_entries(root)
        if (root / "manifest.csv").is_file() and not entries:
            entries, folders = _manifest_entries(root / "manifest.csv"), []
    elif source_path.suffix.lower() == ".csv":
        root = source_path.resolve().parent
        entries, skipped, folders = _manifest_entries(source_path.resolve()), [], []
        missing = [p for p, _, _ in entries if not os.path.isfile(p)]
        skipped += [SkippedFile(p, "listed in the manifest but missing") for p in missing]
        entries = [e for e in entries if os.path.isfile(e[0])]
    else:
        raise InputError(f"dataset '{source}' is neither a folder nor a .csv manifest")

    mapped = []
    for path, label, group in entries:
        canonical = label_map.apply(label)
        if canonical is not None:
            mapped.append((path, canonical, group))
    if class_names is None:
        class_names = sorted({label for _, label, _ in mapped})
    unknown = sorted({label for _, label, _ in mapped} - set(class_names))
    if unknown:
        raise InputError(
            f"dataset '{source}' has classes the model does not know: {', '.join(unknown)}; "
            f"known: {', '.join(class_names)}. Map them with a label map, or drop them "
            "(label map key 'drop')"
        )

    sizes: list[tuple[int, int] | None] = [None] * len(mapped)
    if check_files and mapped:
        scanned = (scan or scan_files)([p for p, _, _ in mapped])
        bad = [SkippedFile(p, r) for (p, _, _), (r, _) in zip(mapped, scanned, strict=True) if r]
        sizes = [size for r, size in scanned if r is None]
        mapped = [e for e, (r, _) in zip(mapped, scanned, strict=True) if r is None]
        skipped = list(skipped) + bad
    if skipped:
        listing = "; ".join(f"'{s.path}': {s.reason}" for s in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        if strict:
            raise InputError(f"dataset '{source}': {len(skipped)} unusable file(s): {listing}{more}")
        warnings.warn(f"dataset '{source}': skipped {len(skipped)} unusable file(s): {listing}{more}",
                      stacklevel=2)
    if not mapped:
        raise InputError(f"dataset '{source}' has no usable images")
    notes = _set_notes(mapped, sizes, folders, label_map, input_size)
    for note in notes:
        if strict:
            raise InputError(f"dataset '{source}': {note}")
        warnings.warn(f"dataset '{source}': {note}", stacklevel=2)

    index = {c: i for i, c in enumerate(class_names)}
    paths = tuple(p for p, _, _ in mapped)
    labels = np.array([index[label] for _, label, _ in mapped], dtype=np.int64)
    groups = [g for _, _, g in mapped]
    has_groups = any(g is not None for g in groups)
    return Dataset(
        name=name or source_path.name,
        root=str(root),
        paths=paths,
        labels=labels,
        class_names=tuple(class_names),
        groups=tuple(g if g is not None else p for g, p in zip(groups, paths, strict=True))
        if has_groups else None,
        skipped=tuple(skipped),
        fingerprint=fingerprint(str(root), paths, labels, tuple(class_names)),
        notes=tuple(notes),
        sizes=_size_array(sizes) if check_files else None,
    )


def _set_notes(mapped: list, sizes: list, folders: list[str], label_map: LabelMap,
               input_size: int | None) -> list[str]:
    """What makes a set weaker evidence than its size suggests (one sentence each)."""
    notes = []
    counts: dict[str, int] = {}
    for _, label, _ in mapped:
        counts[label] = counts.get(label, 0) + 1
    for folder in folders:
        label = label_map.apply(folder)
        if label is not None and counts.get(label, 0) == 0:
            notes.append(f"class folder '{folder}' holds no usable image: class {label} is "
                         "missing from this set")
    few = sorted((n, c) for c, n in counts.items() if n < MIN_CLASS_IMAGES)
    if few:
        notes.append("class(es) with fewer than " + f"{MIN_CLASS_IMAGES} images, whose rates say "
                     "little: " + ", ".join(f"{c} ({n})" for n, c in few))
    if input_size:
        floor = MIN_SIDE_FRACTION * input_size
        small = [(p, size) for (p, _, _), size in zip(mapped, sizes, strict=True)
                 if size is not None and min(size) < floor]
        if small:
            shown = "; ".join(f"'{p}' ({w} x {h})" for p, (w, h) in small[:3])
            more = f" and {len(small) - 3} more" if len(small) > 3 else ""
            notes.append(f"{len(small)} image(s) are far smaller than the model's {input_size}-px "
                         f"input (shorter side under {floor:g} px), so upscaling invents most of "
                         f"their pixels: {shown}{more}")
    return notes


def load_unlabelled(source: str | os.PathLike, *, name: str = "unlabelled",
                    strict: bool = False) -> Dataset:
    """Every image below a folder (any depth, labels ignored), or the rows of a manifest."""
    source_path = Path(source)
    if source_path.is_file() or (source_path.is_dir() and any(
            p.is_dir() for p in source_path.iterdir())):
        ds = load_dataset(source, name=name, strict=strict)
        return ds
    if not source_path.is_dir():
        raise InputError(f"dataset '{source}' does not exist; expected a folder or a CSV manifest")
    paths = sorted(str(p) for p in source_path.rglob("*") if p.is_file()
                   and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    scanned = scan_files(paths)
    reasons = [reason for reason, _ in scanned]
    skipped = tuple(SkippedFile(p, r) for p, r in zip(paths, reasons, strict=True) if r)
    if skipped and strict:
        raise InputError(f"dataset '{source}': {len(skipped)} unusable file(s), first "
                         f"'{skipped[0].path}': {skipped[0].reason}")
    paths = tuple(p for p, r in zip(paths, reasons, strict=True) if r is None)
    if not paths:
        raise InputError(f"dataset '{source}' has no usable images")
    labels = np.zeros(len(paths), dtype=np.int64)
    root = str(source_path.resolve())
    return Dataset(name=name, root=root, paths=paths, labels=labels, class_names=("unlabelled",),
                   skipped=skipped, fingerprint=fingerprint(root, paths, labels, ("unlabelled",)),
                   sizes=_size_array([size for r, size in scanned if r is None]))


def _size_array(sizes: list[tuple[int, int]]) -> np.ndarray:
    """The scan's (width, height) per kept file as (N, 2) int64 (`Dataset.sizes`)."""
    return np.array(sizes, dtype=np.int64).reshape(len(sizes), 2)


def read_images(paths: Sequence[str], size: int, *, resize: str,
                max_workers: int = 4) -> np.ndarray:
    """Decode `paths` into one (N, size, size, 3) uint8 batch, in parallel threads."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    if not paths:
        return out
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        for i, image in enumerate(pool.map(lambda p: load_image(p, size, resize=resize), paths)):
            out[i] = image
    return out


def iter_batches(dataset: Dataset, *, image_size: int, resize: str, batch_size: int = 64
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (images uint8 (B, S, S, 3), indices) in dataset order; only one batch in memory."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, received {batch_size}")
    with ThreadPoolExecutor(max_workers=4) as pool:
        pending = None
        for start in range(0, len(dataset), batch_size):
            indices = np.arange(start, min(start + batch_size, len(dataset)))
            # Decode the next batch while the caller works on this one.
            future = pool.submit(read_images, [dataset.paths[i] for i in indices], image_size,
                                 resize=resize, max_workers=2)
            if pending is not None:
                yield pending[0].result(), pending[1]
            pending = (future, indices)
        if pending is not None:
            yield pending[0].result(), pending[1]
