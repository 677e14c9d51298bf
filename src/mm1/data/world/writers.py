"""File formats, written so that the same content gives the same bytes: PNG without timestamps, tar members with
fixed metadata, JSON with fixed key order, parquet from one pinned writer.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_json(path: Path, data, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


class Shards:
    """WebDataset shards in the img2dataset layout: `KEY.png`, `KEY.txt`, `KEY.json` per sample, KEY a 9-digit
    running index, `per_shard` samples in each `{prefix}-NNNNNN.tar`."""

    def __init__(self, folder: Path, prefix: str, per_shard: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.prefix, self.per_shard = folder, prefix, per_shard
        self.count, self.tar = 0, None

    def add(self, image: Image.Image, text: str, meta: dict) -> None:
        if self.count % self.per_shard == 0:
            self.close()
            name = f"{self.prefix}-{self.count // self.per_shard:06d}.tar"
            self.tar = tarfile.open(self.folder / name, "w", format=tarfile.USTAR_FORMAT)
        key = f"{self.count:09d}"
        meta = {"key": key, **meta}
        for ext, data in (("png", png(image)), ("txt", text.encode()), ("json", json.dumps(meta).encode())):
            info = tarfile.TarInfo(f"{key}.{ext}")  # mtime 0, root owner, mode 644: TarInfo's fixed defaults
            info.size = len(data)
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def write_parquet(path: Path, docs: list[list[str | bytes]]) -> None:
    """OBELICS-style rows: `texts` and `images` lists of equal length, exactly one of the two set at each position."""
    import pyarrow as pa  # only this part of the world needs pyarrow
    import pyarrow.parquet as pq

    texts = [[item if isinstance(item, str) else None for item in doc] for doc in docs]
    images = [[item if isinstance(item, bytes) else None for item in doc] for doc in docs]
    table = pa.table({"texts": pa.array(texts, pa.list_(pa.string())),
                      "images": pa.array(images, pa.list_(pa.binary()))})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=256)


class Media:
    """Image and video files cited by JSON records: written under `root`, cited by paths relative to it."""

    def __init__(self, root: Path):
        self.root = root

    def image(self, image: Image.Image, rel: str) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(image))
        return rel

    def video(self, frames: list[Image.Image], rel: str, gif: bool) -> str:
        """An animated GIF `rel.gif`, or a folder `rel/` of `frame_NNN.png` files."""
        if gif:
            path = self.root / f"{rel}.gif"
            path.parent.mkdir(parents=True, exist_ok=True)
            frames[0].save(path, save_all=True, append_images=frames[1:], duration=250, loop=0)
            return f"{rel}.gif"
        for index, frame in enumerate(frames):
            self.image(frame, f"{rel}/frame_{index:03d}.png")
        return rel
