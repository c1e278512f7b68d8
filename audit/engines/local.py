"""The local engine: decoding threads and batched forward passes on this machine."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["LocalEngine"]


class LocalEngine:
    name = "local"

    def scan(self, paths: Sequence[str]) -> list[tuple[str | None, tuple[int, int] | None]]:
        import audit.data

        return audit.data.scan_files(paths)

    def outputs(self, datasets: dict, *, predictor, cache_dir, cell_size_images: int) -> dict:
        import audit.inference
        from audit.progress import status

        out = {}
        for name, dataset in datasets.items():
            status(f"predicting {name} ({len(dataset)} images)")
            out[name] = audit.inference.compute_outputs(
                dataset, predictor=predictor, cache_dir=cache_dir,
                cell_size_images=cell_size_images)
        return out

    def describe(self) -> dict:
        return {"name": self.name}

    def close(self) -> None:
        pass
