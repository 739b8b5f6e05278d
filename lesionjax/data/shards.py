"""A built shard folder as the library sees it: the manifest, every volume's slice records, and
whole volumes read back for evaluation.

The manifest is written by ``data_prep.build_shards``; its schema is ``lesionjax.core.records``
(the slice records) plus the fields listed there. Nothing here imports ``data_prep``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from lesionjax.core import records
from lesionjax.core.errors import UserError


class ShardSetError(UserError, ValueError):
    """A shard folder is missing, incomplete or of another schema version."""


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """A built shard folder: its manifest and the record index of every volume's slices."""

    root: Path
    manifest: dict

    @classmethod
    def load(cls, root: str | Path) -> ShardSet:
        root = Path(root)
        path = root / "manifest.json"
        if not path.exists():
            raise ShardSetError(
                f"{path}: no manifest; build shards first with python -m data_prep.build_shards"
            )
        try:
            manifest = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ShardSetError(f"{path}: not a readable manifest ({err})") from None
        version = manifest.get("schema_version")
        if version != records.SCHEMA_VERSION:
            raise ShardSetError(
                f"{path}: schema version {version} != {records.SCHEMA_VERSION}; rebuild the "
                "shards (python -m data_prep.build_shards, or re-run the training command)"
            )
        for v in manifest["volumes"]:
            if not (root / v["shard"]).exists():
                raise ShardSetError(f"{root / v['shard']}: shard listed in {path} is missing")
        return cls(root, manifest)

    @property
    def volumes(self) -> list[dict]:
        return self.manifest["volumes"]

    @property
    def n_channels(self) -> int:
        """Input channels: windows x input images (1 + extra sequences / nnU-Net channels)."""
        return int(self.manifest["channels"])

    @property
    def plan(self) -> dict:
        """The preprocessing plan the shards were built with (``data_prep.plan``), as JSON."""
        return self.manifest["plan"]

    def unlabelled(self, case_ids=None) -> list[str]:
        """The volumes (of ``case_ids``, default all) built without a mask (``has_mask``)."""
        wanted = None if case_ids is None else set(case_ids)
        return [
            v["case_id"]
            for v in self.volumes
            if not v["has_mask"] and (wanted is None or v["case_id"] in wanted)
        ]

    def volume(self, case_id: str) -> dict:
        for v in self.volumes:
            if v["case_id"] == case_id:
                return v
        raise KeyError(f"{self.root}: no volume {case_id!r} in the manifest")

    def shard_paths(self) -> list[str]:
        return [str(self.root / v["shard"]) for v in self.volumes]

    def source(self):
        """All slices of all volumes, in manifest order (record i = global slice index i)."""
        import grain

        return grain.sources.ArrayRecordDataSource(self.shard_paths())

    def read_volume(self, case_id: str, source=None) -> dict[str, np.ndarray]:
        """All slices of one volume stacked along z: image (X, Y, Z, C) uint8, mask (X, Y, Z)."""
        v = self.volume(case_id)
        source = source if source is not None else self.source()
        start = v["record_offset"]
        raw = [source[i] for i in range(start, start + v["n_slices"])]
        decoded = [records.decode_record(r) for r in raw]
        out = {
            "image": np.stack([d["image"] for d in decoded], axis=2),
            "mask": np.stack([d["mask"] for d in decoded], axis=2),
        }
        if "icm" in decoded[0]:
            out["icm"] = np.stack([d["icm"] for d in decoded], axis=2)
        return out


def shards_dir(config, workdir: str | Path) -> Path:
    """The shard folder of a run: ``data.shards_dir``, or ``<workdir>/shards`` when unset."""
    folder = config.data.get("shards_dir") or ""
    return Path(folder).expanduser() if folder else Path(workdir) / "shards"
