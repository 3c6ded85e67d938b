"""Parquet shards + ``manifest.json``: the on-disk/S3 dataset format, writer and no-Ray reader.

Layout under a destination (local folder or ``s3://bucket/prefix``)::

    part-00000.parquet ... part-0000K.parquet   # one row per image
    manifest.json                               # written LAST

Shard columns: ``image`` (binary: raw uint8 HWC bytes, H*W*3 of them), ``label`` (int64, -1 =
unlabeled), ``index`` (int64, global, 0..N-1 in source order; shard k holds the contiguous range
``[first_index, first_index + rows)``). The manifest lists every shard with its row count,
first index and the sha256 of the file bytes, so readers can verify and so a dataset without a
manifest (a crashed conversion) never looks complete.

No Ray imports here: this module is core.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.storage import (
    DataError,
    Location,
    delete,
    exists,
    read_bytes,
    resolve,
    write_bytes_atomic,
)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("index", pa.int64())])
DEFAULT_SHARD_SIZE = 10_000
ROW_GROUP_ROWS = 1024  # Ray reads row groups as units; ~3 MiB of 32x32 images each


@dataclass(frozen=True)
class ShardInfo:
    """One parquet shard: path relative to the manifest, rows, sha256 of the bytes, first index."""

    path: str
    rows: int
    sha256: str
    first_index: int


@dataclass(frozen=True)
class Manifest:
    """A validated ``manifest.json``. ``base_uri`` is the folder it was read from (not stored)."""

    dataset: str
    split: str
    count: int
    num_classes: int
    image_shape: tuple[int, int, int]
    shards: tuple[ShardInfo, ...]
    class_names: Optional[tuple[str, ...]] = None
    format_version: int = FORMAT_VERSION
    base_uri: str = field(default="", compare=False)

    def shard_uri(self, shard: ShardInfo) -> str:
        """The full URI of ``shard`` (base folder + relative path)."""
        if self.base_uri.startswith("s3://"):
            return self.base_uri.rstrip("/") + "/" + shard.path
        return str(Path(self.base_uri, shard.path))

    def to_json(self) -> str:
        """The manifest as JSON text (base_uri is left out: manifests are relocatable)."""
        d = asdict(self)
        d.pop("base_uri")
        d["image_shape"] = list(self.image_shape)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "manifest", base_uri: str = "") -> "Manifest":
        """Build and validate a manifest from parsed JSON; DataError names the problem."""
        def bad(msg: str) -> DataError:
            return DataError(f"{source}: invalid manifest: {msg}")

        if not isinstance(d, dict):
            raise bad("not a JSON object")
        required = {"dataset", "split", "count", "num_classes", "image_shape", "shards",
                    "format_version"}
        missing = sorted(required - set(d))
        if missing:
            raise bad(f"missing key(s) {missing}")
        unknown = sorted(set(d) - required - {"class_names"})
        if unknown:
            raise bad(f"unknown key(s) {unknown}")
        if d["format_version"] != FORMAT_VERSION:
            raise bad(f"format_version {d['format_version']!r}, this code reads {FORMAT_VERSION}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(d["count"]) or d["count"] <= 0:
            raise bad(f"count must be a positive integer, got {d['count']!r} (empty dataset?)")
        if not is_int(d["num_classes"]) or d["num_classes"] < 0:
            raise bad(f"num_classes must be an integer >= 0, got {d['num_classes']!r}")
        shp = d["image_shape"]
        if not (isinstance(shp, list) and len(shp) == 3 and all(is_int(s) and s > 0 for s in shp)
                and shp[2] == 3):
            raise bad(f"image_shape must be [H, W, 3], got {shp!r}")
        names = d.get("class_names")
        if names is not None and (not isinstance(names, list)
                                  or not all(isinstance(n, str) for n in names)
                                  or len(names) != d["num_classes"]):
            raise bad(f"class_names must be {d['num_classes']} strings")
        if not isinstance(d["shards"], list) or not d["shards"]:
            raise bad("shards must be a non-empty list")
        shards = []
        expect_first = 0
        for i, s in enumerate(d["shards"]):
            if not isinstance(s, dict) or set(s) != {"path", "rows", "sha256", "first_index"}:
                raise bad(f"shard {i} must have exactly path, rows, sha256, first_index")
            p = s["path"]
            if not isinstance(p, str) or not p or p.startswith("/") or "\\" in p \
                    or ".." in p.split("/") or "://" in p:
                raise bad(f"shard {i} path {p!r} must be a relative path inside the dataset")
            if not is_int(s["rows"]) or s["rows"] <= 0:
                raise bad(f"shard {p} rows must be a positive integer, got {s['rows']!r}")
            if not is_int(s["first_index"]) or s["first_index"] != expect_first:
                raise bad(f"shard {p} first_index {s['first_index']!r}, expected {expect_first} "
                          "(shards must cover 0..count-1 contiguously)")
            if not isinstance(s["sha256"], str) or len(s["sha256"]) != 64:
                raise bad(f"shard {p} sha256 must be 64 hex characters")
            expect_first += s["rows"]
            shards.append(ShardInfo(p, s["rows"], s["sha256"], s["first_index"]))
        if expect_first != d["count"]:
            raise bad(f"shard rows sum to {expect_first} but count is {d['count']}")
        return cls(dataset=str(d["dataset"]), split=str(d["split"]), count=d["count"],
                   num_classes=d["num_classes"], image_shape=tuple(shp),  # type: ignore[arg-type]
                   shards=tuple(shards),
                   class_names=tuple(names) if names is not None else None,
                   format_version=FORMAT_VERSION, base_uri=base_uri)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def _split_manifest_uri(uri: str) -> tuple[str, str]:
    """(folder URI, manifest URI) for either a folder or a ``.../manifest.json`` URI."""
    u = str(uri).rstrip("/")
    if u.endswith(".json"):
        folder = u.rsplit("/", 1)[0] if "/" in u else "."
        return folder, u
    return u, u + "/" + MANIFEST_NAME


def read_manifest(uri: str, *, s3_endpoint: Optional[str] = None,
                  storage_options: Optional[dict[str, Any]] = None) -> Manifest:
    """Read and validate ``manifest.json`` at ``uri`` (the dataset folder or the file itself)."""
    folder, muri = _split_manifest_uri(uri)
    loc = resolve(muri, s3_endpoint=s3_endpoint, storage_options=storage_options)
    try:
        raw = read_bytes(loc)
    except DataError as e:
        if str(e).endswith("not found"):
            raise DataError(f"{muri}: manifest not found (not a converted dataset, or the "
                            "conversion did not finish; run jobs.prepare_data)") from None
        raise
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{muri}: manifest is not valid JSON ({e})") from None
    base = folder if folder.startswith("s3://") else str(resolve(folder).path)
    return Manifest.from_dict(d, source=muri, base_uri=base)


def _as_manifest(m: Union[str, Manifest], **kw: Any) -> Manifest:
    return m if isinstance(m, Manifest) else read_manifest(m, **kw)


def binary_to_images(col: Union[pa.Array, pa.ChunkedArray], shape: Sequence[int],
                     source: str) -> np.ndarray:
    """A binary column of raw HWC bytes -> uint8 (n, H, W, 3) without a per-row Python loop."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        raise DataError(f"{source}: column 'image' has type {col.type}, expected binary")
    n = len(col)
    per = int(np.prod(shape))
    if n == 0:
        return np.zeros((0, *shape), np.uint8)
    if col.null_count:
        raise DataError(f"{source}: {col.null_count} null image(s)")
    off_dtype = np.int64 if pa.types.is_large_binary(col.type) else np.int32
    bufs = col.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_dtype)[col.offset:col.offset + n + 1]
    lengths = np.diff(offsets)
    if (lengths != per).any():
        i = int(np.argmax(lengths != per))
        raise DataError(f"{source}: image {i} has {int(lengths[i])} bytes, expected {per} "
                        f"(= {shape[0]}x{shape[1]}x3; wrong image size)")
    data = np.frombuffer(bufs[2], dtype=np.uint8)[int(offsets[0]):int(offsets[-1])]
    return data.reshape(n, *shape)


def _read_shard_table(m: Manifest, shard: ShardInfo, *, verify: bool,
                      s3_endpoint: Optional[str], storage_options: Optional[dict]) -> pa.Table:
    uri = m.shard_uri(shard)
    data = read_bytes(resolve(uri, s3_endpoint=s3_endpoint, storage_options=storage_options))
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if digest != shard.sha256:
            raise DataError(f"{uri}: checksum mismatch (sha256 {digest[:12]}..., manifest says "
                            f"{shard.sha256[:12]}...): the shard is corrupt or was replaced")
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{uri}: not a readable parquet file (truncated or corrupt: {e})") \
            from None
    check_table(table, m, shard, uri)
    return table


def check_table(table: pa.Table, m: Manifest, shard: ShardInfo, uri: str) -> None:
    """Validate one shard's schema, row count, index range and label range."""
    got = {f.name: f.type for f in table.schema}
    want = {f.name: f.type for f in SCHEMA}
    if got != want:
        raise DataError(f"{uri}: wrong schema {got}; expected {want}")
    if table.num_rows != shard.rows:
        raise DataError(f"{uri}: {table.num_rows} rows but the manifest says {shard.rows}")
    idx = table.column("index").to_numpy()
    if not np.array_equal(idx, np.arange(shard.first_index, shard.first_index + shard.rows)):
        raise DataError(f"{uri}: index column is not {shard.first_index}.."
                        f"{shard.first_index + shard.rows - 1} as the manifest says")
    lab = table.column("label").to_numpy()
    if lab.size and (lab.min() < -1 or lab.max() >= max(m.num_classes, 0)):
        bad = int(lab.min()) if lab.min() < -1 else int(lab.max())
        raise DataError(f"{uri}: label {bad} out of range (-1..{m.num_classes - 1})")


def load_arrays(uri: Union[str, Manifest], *, indices: Optional[Sequence[int]] = None,
                verify: bool = True, s3_endpoint: Optional[str] = None,
                storage_options: Optional[dict[str, Any]] = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load a dataset (or the rows ``indices``) into memory, without Ray.

    Args:
        uri: dataset folder / manifest URI (local or ``s3://``), or a :class:`Manifest`.
        indices: global indices to load, in the order wanted (duplicates allowed); None = all.
            Only the shards holding them are read.
        verify: check each shard's sha256 against the manifest (cheap next to the read).

    Returns:
        ``(images uint8 (N,H,W,3), labels int64 (N,), index int64 (N,))``.
    """
    kw = dict(s3_endpoint=s3_endpoint, storage_options=storage_options)
    m = _as_manifest(uri, **kw)
    shape = tuple(m.image_shape)
    if indices is None:
        want = None
        shard_ids = range(len(m.shards))
    else:
        want = np.asarray(indices, dtype=np.int64).reshape(-1)
        if want.size and (want.min() < 0 or want.max() >= m.count):
            raise DataError(f"{m.base_uri}: index out of range 0..{m.count - 1} "
                            f"(got {int(want.min())}..{int(want.max())})")
        firsts = np.array([s.first_index for s in m.shards])
        shard_ids = np.unique(np.searchsorted(firsts, want, side="right") - 1).tolist()
    images = np.empty((m.count if want is None else 0, *shape), np.uint8)
    labels = np.empty(m.count if want is None else 0, np.int64)
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k in shard_ids:
        sh = m.shards[k]
        t = _read_shard_table(m, sh, verify=verify, **kw)
        im = binary_to_images(t.column("image"), shape, m.shard_uri(sh))
        lab = t.column("label").to_numpy()
        if want is None:
            images[sh.first_index:sh.first_index + sh.rows] = im
            labels[sh.first_index:sh.first_index + sh.rows] = lab
        else:
            parts[sh.first_index] = (im, lab)
    if want is None:
        return images, labels, np.arange(m.count, dtype=np.int64)
    out_im = np.empty((len(want), *shape), np.uint8)
    out_lab = np.empty(len(want), np.int64)
    for first, (im, lab) in parts.items():
        sel = (want >= first) & (want < first + len(lab))
        out_im[sel] = im[want[sel] - first]
        out_lab[sel] = lab[want[sel] - first]
    return out_im, out_lab, want.copy()


def shard_of(m: Manifest, indices: Sequence[int]) -> np.ndarray:
    """(n,) int64 shard number holding each global index (pure; DataError if out of range)."""
    want = np.asarray(indices, dtype=np.int64).reshape(-1)
    if want.size and (want.min() < 0 or want.max() >= m.count):
        raise DataError(f"{m.base_uri}: index out of range 0..{m.count - 1} "
                        f"(got {int(want.min())}..{int(want.max())})")
    firsts = np.array([sh.first_index for sh in m.shards], dtype=np.int64)
    return (np.searchsorted(firsts, want, side="right") - 1).astype(np.int64)


class RowReader:
    """Rows by global index, read one verified shard at a time: memory O(rows asked + one shard).

    Unlike :func:`load_arrays` (which holds every touched shard's full arrays until the end),
    each shard's table is dropped as soon as its requested rows are copied out, except the last
    one read, which is kept so a following call that needs the same shard (the next chunk of an
    RCS task, see ``pipeline.coreset.plan``) does not read it again. ``shards_read`` lists every
    shard actually read, in order (bytes: ``pipeline.data.storage.READ_STATS``).
    """

    def __init__(self, uri: Union[str, Manifest], *, verify: bool = True,
                 s3_endpoint: Optional[str] = None,
                 storage_options: Optional[dict[str, Any]] = None) -> None:
        self._kw = dict(s3_endpoint=s3_endpoint, storage_options=storage_options)
        self.manifest = _as_manifest(uri, **self._kw)
        self.verify = verify
        self.shards_read: list[int] = []
        self._last: Optional[tuple[int, np.ndarray, np.ndarray]] = None

    def _shard(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._last is not None and self._last[0] == k:
            return self._last[1], self._last[2]
        m, sh = self.manifest, self.manifest.shards[k]
        self._last = None  # release the previous shard before reading the next
        t = _read_shard_table(m, sh, verify=self.verify, **self._kw)
        im = binary_to_images(t.column("image"), tuple(m.image_shape), m.shard_uri(sh))
        lab = t.column("label").to_numpy()
        self.shards_read.append(k)
        self._last = (k, im, lab)
        return im, lab

    def read(self, indices: Sequence[int], *, last: Sequence[int] = ()
             ) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 (n,H,W,3), labels int64 (n,))`` of ``indices``, in their order.

        Shards are visited in ascending order, the kept one first and those in ``last`` at the
        end (so the kept shard is the one the next call wants).
        """
        m = self.manifest
        want = np.asarray(indices, dtype=np.int64).reshape(-1)
        where = shard_of(m, want)
        ids = np.unique(where).tolist()
        tail = [k for k in ids if k in set(last)]
        head = [k for k in ids if k not in set(tail)]
        if self._last is not None and self._last[0] in head:
            head.remove(self._last[0])
            head.insert(0, self._last[0])
        out_im = np.empty((len(want), *m.image_shape), np.uint8)
        out_lab = np.empty(len(want), np.int64)
        for k in head + tail:
            im, lab = self._shard(k)
            sel = np.flatnonzero(where == k)
            rows = want[sel] - m.shards[k].first_index
            out_im[sel] = im[rows]
            out_lab[sel] = lab[rows]
        return out_im, out_lab

    def release(self) -> None:
        """Drop the kept shard."""
        self._last = None


def iter_shards(uri: Union[str, Manifest], *, order: Optional[Sequence[int]] = None,
                verify: bool = True, s3_endpoint: Optional[str] = None,
                storage_options: Optional[dict[str, Any]] = None,
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(images, labels, index)`` one verified shard at a time (``order``: shard ids)."""
    kw = dict(s3_endpoint=s3_endpoint, storage_options=storage_options)
    m = _as_manifest(uri, **kw)
    for k in (range(len(m.shards)) if order is None else order):
        sh = m.shards[int(k)]
        t = _read_shard_table(m, sh, verify=verify, **kw)
        yield (binary_to_images(t.column("image"), tuple(m.image_shape), m.shard_uri(sh)),
               t.column("label").to_numpy(),
               np.arange(sh.first_index, sh.first_index + sh.rows, dtype=np.int64))


def _stream_order(m: Manifest, seed: int, epoch: int, keep: Optional[np.ndarray]) -> np.ndarray:
    """The per-epoch seeded shard order of :func:`stream_batches` (shards holding ``keep``)."""
    ss = np.random.SeedSequence([int(seed) % 2**63, int(epoch), 0x57AE])
    order = np.random.default_rng(ss).permutation(len(m.shards))
    if keep is not None:
        held = set(np.unique(shard_of(m, keep)).tolist())
        order = np.array([k for k in order if k in held], dtype=np.int64)
    return order


def stream_rows_per_rank(uri: Union[str, Manifest], *, seed: int, epoch: int, world: int,
                         indices: Optional[Sequence[int]] = None,
                         s3_endpoint: Optional[str] = None) -> list[int]:
    """Rows each rank's :func:`stream_batches` yields this epoch (so DDP ranks can agree on a
    common number of steps without reading anything)."""
    m = _as_manifest(uri, s3_endpoint=s3_endpoint)
    keep = None if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
    per = (np.array([sh.rows for sh in m.shards]) if keep is None
           else np.bincount(shard_of(m, keep), minlength=len(m.shards)))
    order = _stream_order(m, seed, epoch, keep)
    return [int(per[order[r::world]].sum()) for r in range(world)]


def stream_batches(uri: Union[str, Manifest], batch_size: int, *, seed: int, epoch: int,
                   indices: Optional[Sequence[int]] = None, rank: int = 0, world: int = 1,
                   buffer_rows: int = 20_000, verify: bool = True,
                   s3_endpoint: Optional[str] = None,
                   storage_options: Optional[dict[str, Any]] = None,
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One epoch of ``(images uint8 (B,H,W,3), labels, index)`` batches in bounded memory.

    Shards are read one at a time in a per-epoch seeded order (this rank takes every
    ``world``-th shard of it), restricted to ``indices`` when given, and pass through a shuffle
    buffer of at most ``buffer_rows`` rows + one shard, from which batches are drawn at random
    (seeded by (seed, epoch, rank)). Memory does not grow with the dataset.
    """
    kw = dict(s3_endpoint=s3_endpoint, storage_options=storage_options)
    m = _as_manifest(uri, **kw)
    if batch_size < 1 or buffer_rows < 1:
        raise DataError("batch_size and buffer_rows must be >= 1")
    keep = None if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
    order = _stream_order(m, seed, epoch, keep)
    mine = order[rank::world].tolist()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) % 2**63, int(epoch), rank]))
    shape = tuple(m.image_shape)
    b_im = np.zeros((0, *shape), np.uint8)
    b_lab = b_idx = np.zeros(0, np.int64)
    for im, lab, idx in iter_shards(m, order=mine, verify=verify, **kw):
        if keep is not None:
            sel = np.flatnonzero(np.isin(idx, keep))
            im, lab, idx = im[sel], lab[sel], idx[sel]
        # buffer + this shard, shuffled once; batches leave from the front until the buffer
        # is back to buffer_rows rows
        p = rng.permutation(len(b_lab) + len(lab))
        b_im = np.concatenate([b_im, im])[p]
        b_lab, b_idx = np.concatenate([b_lab, lab])[p], np.concatenate([b_idx, idx])[p]
        n_out = max(0, len(b_lab) - buffer_rows) // batch_size * batch_size
        for s0 in range(0, n_out, batch_size):
            yield b_im[s0:s0 + batch_size], b_lab[s0:s0 + batch_size], b_idx[s0:s0 + batch_size]
        b_im, b_lab, b_idx = b_im[n_out:].copy(), b_lab[n_out:], b_idx[n_out:]
    for s0 in range(0, len(b_lab), batch_size):
        yield b_im[s0:s0 + batch_size], b_lab[s0:s0 + batch_size], b_idx[s0:s0 + batch_size]


def split_by_index(source: Union[Manifest, int, np.ndarray, str], val_fraction: float,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic disjoint (train, val) split of global indices, both sorted int64.

    ``source``: a Manifest / manifest URI (indices 0..count-1), a count, or an array of
    indices. ``floor(n * val_fraction)`` indices are held out (at least 1 if the fraction > 0),
    chosen by a seeded permutation, like the authors' 99%/1% numpy choice (spec §5.1).
    """
    if isinstance(source, (Manifest, str)):
        all_idx = np.arange(_as_manifest(source).count, dtype=np.int64)
    elif isinstance(source, (int, np.integer)):
        all_idx = np.arange(int(source), dtype=np.int64)
    else:
        all_idx = np.unique(np.asarray(source, dtype=np.int64))
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(all_idx)
    n_val = int(math.floor(n * val_fraction + 1e-9))
    if val_fraction > 0 and n > 1:
        n_val = max(n_val, 1)
    perm = np.random.default_rng(seed).permutation(n)
    val = np.sort(all_idx[perm[:n_val]])
    train = np.sort(all_idx[perm[n_val:]])
    return train, val


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def shard_name(k: int) -> str:
    """File name of shard ``k``."""
    return f"part-{k:05d}.parquet"


def _rebatch(chunks: Iterable[tuple[np.ndarray, np.ndarray]], size: int
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Re-cut a stream of (images, labels) chunks into pieces of exactly ``size`` (last shorter)."""
    buf_i: list[np.ndarray] = []
    buf_l: list[np.ndarray] = []
    have = 0
    for im, lab in chunks:
        buf_i.append(im)
        buf_l.append(lab)
        have += len(im)
        while have >= size:
            all_i, all_l = np.concatenate(buf_i), np.concatenate(buf_l)
            yield all_i[:size], all_l[:size]
            buf_i, buf_l, have = [all_i[size:]], [all_l[size:]], have - size
    if have:
        yield np.concatenate(buf_i), np.concatenate(buf_l)


def encode_shard(images: np.ndarray, labels: np.ndarray, first_index: int) -> bytes:
    """Parquet bytes for one shard (binary image column built from one buffer, no copies/row)."""
    n = len(images)
    per = int(np.prod(images.shape[1:]))
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * per).tobytes())
    image_col = pa.Array.from_buffers(pa.binary(), n,
                                      [None, offsets, pa.py_buffer(np.ascontiguousarray(images))])
    table = pa.Table.from_arrays(
        [image_col, pa.array(labels, pa.int64()),
         pa.array(np.arange(first_index, first_index + n, dtype=np.int64))], schema=SCHEMA)
    sink = pa.BufferOutputStream()
    # No compression: raw pixels barely compress and decompression would cost read throughput.
    pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, compression="none",
                   write_statistics=["index"])
    return sink.getvalue().to_pybytes()


def write_dataset(chunks: Iterable[tuple[np.ndarray, np.ndarray]], dest: str, *, dataset: str,
                  split: str, image_shape: Sequence[int], num_classes: Optional[int] = None,
                  class_names: Optional[Sequence[str]] = None,
                  shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
                  s3_endpoint: Optional[str] = None,
                  storage_options: Optional[dict[str, Any]] = None) -> Manifest:
    """Write (images, labels) chunks as parquet shards + manifest (last) under ``dest``.

    Every chunk is checked (uint8, shape ``image_shape``, labels in -1..num_classes-1).
    ``num_classes=None`` infers ``max(label) + 1``. An existing complete dataset (a manifest)
    is refused unless ``overwrite``; then its manifest is deleted FIRST so a crash mid-rewrite
    leaves nothing that looks complete.
    """
    if shard_size <= 0:
        raise DataError(f"shard size must be positive, got {shard_size}")
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or shape[2] != 3:
        raise DataError(f"{dest}: image_shape must be (H, W, 3), got {shape}")
    kw = dict(s3_endpoint=s3_endpoint, storage_options=storage_options)
    root = resolve(dest, **kw)
    mloc = root.child(MANIFEST_NAME)
    old: Optional[Manifest] = None
    if exists(mloc):
        if not overwrite:
            raise DataError(f"{mloc.uri}: a complete dataset already exists here; "
                            "pass --overwrite (overwrite=True) to replace it")
        try:
            old = read_manifest(dest, **kw)
        except DataError:
            old = None
        delete(mloc)

    shards: list[ShardInfo] = []
    count = 0
    seen = 0
    max_label = -1

    def validated() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # Check each source chunk before re-cutting, so errors name the source rows.
        nonlocal seen, max_label
        for im, lab in chunks:
            im = np.asarray(im)
            where = f"{dest} (source rows {seen}..{seen + len(im) - 1})"
            if im.dtype != np.uint8 or tuple(im.shape[1:]) != shape:
                raise DataError(f"{where}: images are {im.dtype} {tuple(im.shape[1:])}, "
                                f"expected uint8 {shape} (wrong image size?)")
            lab = np.asarray(lab, dtype=np.int64)
            if lab.shape != (len(im),):
                raise DataError(f"{where}: {lab.shape} labels for {len(im)} images")
            if lab.size and lab.min() < -1:
                raise DataError(f"{where}: label {int(lab.min())} out of range (>= -1)")
            if num_classes is not None and lab.size and lab.max() >= num_classes:
                raise DataError(f"{where}: label {int(lab.max())} out of range "
                                f"(num_classes {num_classes})")
            max_label = max(max_label, int(lab.max()) if lab.size else -1)
            seen += len(im)
            yield im, lab

    for k, (im, lab) in enumerate(_rebatch(validated(), shard_size)):
        data = encode_shard(im, lab, count)
        name = shard_name(k)
        write_bytes_atomic(root.child(name), data)
        shards.append(ShardInfo(name, len(im), hashlib.sha256(data).hexdigest(), count))
        count += len(im)
    if count == 0:
        raise DataError(f"{dest}: empty dataset (the source yielded no images); nothing written")
    # Old shards beyond the new count are stale leftovers of the overwritten dataset.
    if old is not None:
        for s in old.shards[len(shards):]:
            delete(root.child(s.path))
    k_final = num_classes if num_classes is not None else max_label + 1
    names = tuple(class_names) if class_names is not None else None
    if names is not None and len(names) != k_final:
        names = None  # e.g. a folder with unused class dirs; keep the manifest self-consistent
    m = Manifest(dataset=dataset, split=split, count=count, num_classes=k_final,
                 image_shape=shape, shards=tuple(shards), class_names=names,  # type: ignore
                 base_uri=dest if dest.startswith("s3://") else root.path)
    write_bytes_atomic(mloc, m.to_json().encode())
    return m


SOURCE_INDEX_NAME = "source_index.npy"


def write_subset(source: Union[str, Manifest], indices: Sequence[int], dest: str, *,
                 shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
                 verify: bool = True, s3_endpoint: Optional[str] = None,
                 storage_options: Optional[dict[str, Any]] = None) -> Manifest:
    """Materialise the rows ``indices`` of ``source`` as their own sharded dataset at ``dest``.

    Reads only the shards holding the indices, one at a time (memory: one source shard + one
    output shard), and writes the same format (local or ``s3://``): rows in ascending global
    index, re-numbered 0..n-1 (the format's contiguous ``index``), labels and classes kept;
    ``source_index.npy`` (int64, row -> global index of ``source``, read back with
    :func:`read_source_index`) before the manifest, which is written last. A coreset epoch
    then reads ~n rows instead of filtering every shard of ``source``.

    Where it plugs in (issue 12 item 2): ``pipeline/train/segments.py`` trains a segment with
    ``read_dataset(cfg.data.manifest, indices=rows)`` where ``rows`` are the coreset indices,
    i.e. every epoch reads all shards and filters. After ``_select``, write the coreset with
    ``write_subset(manifest, idx, <run storage>/coresets/epoch-NNNN)`` and read that instead
    (keep ``idx`` in the checkpoint for exact resume; rewrite the subset if it is missing;
    delete superseded ones when the run finishes). Likewise write the validation split once
    per run and pass it as ``select_coreset_ray(val_manifest_uri=...)``.
    """
    kw = dict(s3_endpoint=s3_endpoint, storage_options=storage_options)
    m = _as_manifest(source, **kw)
    want = np.asarray(indices, dtype=np.int64).reshape(-1)
    order = np.unique(want)
    if len(order) != len(want):
        raise DataError(f"{dest}: subset indices must be unique")
    if not len(order):
        raise DataError(f"{dest}: empty subset; nothing written")
    where = shard_of(m, order)
    root = resolve(dest, **kw)
    mloc = root.child(MANIFEST_NAME)
    stale: tuple[ShardInfo, ...] = ()
    if exists(mloc):
        if not overwrite:
            raise DataError(f"{mloc.uri}: a complete dataset already exists here; "
                            "pass overwrite=True to replace it")
        try:
            stale = read_manifest(dest, **kw).shards
        except DataError:
            stale = ()
        delete(mloc)  # first: a crash below leaves nothing that looks complete
    buf = io.BytesIO()
    np.save(buf, order, allow_pickle=False)
    write_bytes_atomic(root.child(SOURCE_INDEX_NAME), buf.getvalue())

    def rows() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        ids = np.unique(where)
        for im, lab, idx in iter_shards(m, order=ids.tolist(), verify=verify, **kw):
            sel = order[(order >= idx[0]) & (order <= idx[-1])] - idx[0]
            yield np.ascontiguousarray(im[sel]), lab[sel]

    out = write_dataset(rows(), dest, dataset=m.dataset, split=f"{m.split}-subset",
                        image_shape=m.image_shape, num_classes=m.num_classes,
                        class_names=m.class_names, shard_size=shard_size, **kw)
    for sh in stale[len(out.shards):]:
        delete(root.child(sh.path))
    return out


def read_source_index(uri: str, *, s3_endpoint: Optional[str] = None,
                      storage_options: Optional[dict[str, Any]] = None) -> np.ndarray:
    """The global source indices of a :func:`write_subset` dataset (row order), int64."""
    folder, _ = _split_manifest_uri(uri)
    loc = resolve(folder, s3_endpoint=s3_endpoint, storage_options=storage_options)
    raw = read_bytes(loc.child(SOURCE_INDEX_NAME))
    return np.load(io.BytesIO(raw), allow_pickle=False).astype(np.int64)
