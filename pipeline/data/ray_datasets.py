"""Ray Data over the parquet shards written by :mod:`pipeline.data.shards` (worker layer).

Rows: ``image`` uint8 **(3, H, W)** (channels first, so ``iter_torch_batches`` yields the
trainer's uint8 (B, 3, H, W) tensors with no further transpose), ``label`` int64, ``index``
int64 (global, stable). ``layout="hwc"`` gives (H, W, 3) instead.

Per-epoch shuffling (why not ``random_shuffle`` or a big ``local_shuffle_buffer_size``: a
global shuffle moves every image through the object store each epoch, and large local buffers
halve throughput, Ray issue #42317). Instead ``read_dataset(..., shuffle_seed=s, epoch=e)``
builds a lazily-read dataset whose order is randomised three ways, all seeded by ``(s, e)``:
1. the shard file order is permuted;
2. ``randomize_block_order`` permutes the blocks (parquet row groups) across files;
3. rows are permuted inside each block in the decode ``map_batches`` (the block is already in
   memory, so this is free).
Call it once per epoch (like the authors' per-epoch loader rebuild, spec §2.1); a consumer may
add a *small* ``local_shuffle_buffer_size`` (about one batch) to mix neighbouring blocks.

Checksums: ``verify_shards`` hashes every shard (sha256 of the file bytes, as the manifest
records them) in parallel Ray tasks, once per driver process and shard version (size + mtime
for local files), before the first fit of a run; a flipped byte anywhere in a shard is a
``DataError`` naming that shard file. Per-epoch hashing would cost the same again every epoch
(numbers: ``python -m jobs.benchmark data --paths ray_local,verify``).

Only this module (in ``pipeline/data``) imports Ray. Ray lines carry numbered comments.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipeline.data import shards as _shards
from pipeline.data.shards import Manifest, binary_to_images, read_manifest
from pipeline.data.storage import DataError, resolve, wrap_os_error

Layout = Literal["chw", "hwc"]


def _seed_for(seed: int, epoch: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(salt)])


def _batch_source(index: np.ndarray, shard_firsts: Optional[Sequence[int]],
                  shard_uris: Optional[Sequence[str]]) -> str:
    """The shard file holding the batch's first row (errors name the file, not "ray batch")."""
    if not len(index) or not shard_firsts or not shard_uris:
        return "ray batch (shard unknown)"
    k = int(np.searchsorted(np.asarray(shard_firsts), int(index[0]), side="right")) - 1
    return f"{shard_uris[max(k, 0)]} (rows from index {int(index[0])})"


def decode_batch(batch: pa.Table, *, image_shape: Sequence[int], layout: Layout = "chw",
                 shuffle_seed: Optional[int] = None, epoch: int = 0,
                 shard_firsts: Optional[Sequence[int]] = None,
                 shard_uris: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Decode a pyarrow batch of raw rows into numpy columns for training.

    ``image`` binary (raw HWC bytes) -> uint8 (B, 3, H, W) (or (B, H, W, 3) for ``"hwc"``);
    ``label``/``index`` -> int64 (B,). With ``shuffle_seed`` the rows are permuted with a
    generator seeded by (seed, epoch, first index of the batch), so it is reproducible.
    """
    labels = batch.column("label").to_numpy()
    index = batch.column("index").to_numpy()
    images = binary_to_images(batch.column("image"), tuple(image_shape),
                              _batch_source(index, shard_firsts, shard_uris))
    if shuffle_seed is not None and len(index):
        perm = _seed_for(shuffle_seed, epoch, int(index[0])).permutation(len(index))
        images, labels, index = images[perm], labels[perm], index[perm]
    if layout == "chw":
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    elif layout != "hwc":
        raise ValueError(f"layout must be 'chw' or 'hwc', got {layout!r}")
    return {"image": images, "label": np.asarray(labels, np.int64),
            "index": np.asarray(index, np.int64)}


def _filter_index(batch: pa.Table, *, selected: Any) -> pa.Table:
    """Keep rows whose ``index`` is in the sorted int64 array ``selected`` (binary search)."""
    if isinstance(selected, ray.ObjectRef):
        selected = ray.get(selected)  # [1] zero-copy read of the shared index array
    idx = batch.column("index").to_numpy()
    if len(selected) == 0:
        return batch.slice(0, 0)
    pos = np.searchsorted(selected, idx).clip(max=len(selected) - 1)
    mask = selected[pos] == idx
    return batch.filter(pa.array(mask))


def _sorted_unique(indices: Union[Sequence[int], np.ndarray]) -> np.ndarray:
    return np.unique(np.asarray(indices, dtype=np.int64).reshape(-1))


def _check_shard_footers(m: Manifest, fs: Any, paths: list[str]) -> None:
    """Read only each shard's parquet footer (one small request) to fail early and clearly."""
    want = {f.name: f.type for f in _shards.SCHEMA}
    for shard, path in zip(m.shards, paths):
        uri = m.shard_uri(shard)
        try:
            with fs.open_input_file(path) as f:
                meta = pq.read_metadata(f)
        except FileNotFoundError:
            raise DataError(f"{uri}: shard listed in the manifest is missing") from None
        except pa.ArrowInvalid as e:
            raise DataError(f"{uri}: not a readable parquet file (truncated or corrupt: {e})") \
                from None
        except OSError as e:
            raise wrap_os_error(e, uri, "read") from None
        got = {f.name: f.type for f in meta.schema.to_arrow_schema()}
        if got != want:
            raise DataError(f"{uri}: wrong schema {got}; expected {want}")
        if meta.num_rows != shard.rows:
            raise DataError(f"{uri}: {meta.num_rows} rows but the manifest says {shard.rows}")


class ShardDatasource(ray.data.Datasource):
    """The manifest's shards as a Ray Data source: one read task per shard, a block per row group.

    Each task reads its shard, keeps the requested rows (``selected``: that shard's global
    indices, for coresets) and decodes them (``decode``: :func:`decode_batch` keyword
    arguments), so one fused operator does what ``read_parquet`` + filter + decode did.
    Why not ``ray.data.read_parquet``: it lists and samples the files in a ``ListFiles``
    operator at every execution, i.e. every epoch, and a separate decode operator cost another
    start; on a one-shard dataset the data path took 6-7 s per epoch that way (Ray 2.60, 2
    cores). The manifest already names every shard and its row count.
    """

    def __init__(self, fs: Any, paths: list[str], rows: list[int],
                 selected: Optional[list[Optional[np.ndarray]]] = None,
                 decode: Optional[dict[str, Any]] = None) -> None:
        self._fs, self._paths, self._rows = fs, list(paths), list(rows)
        self._selected = selected or [None] * len(self._paths)
        self._decode = decode

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return None

    def get_read_tasks(self, parallelism: int, **_: Any) -> list[Any]:
        from ray.data.block import BlockAccessor, BlockMetadata
        from ray.data.datasource import ReadTask

        def read(fs: Any, path: str, sel: Optional[np.ndarray], decode: Optional[dict[str, Any]]) -> Any:
            try:
                with fs.open_input_file(path) as f:
                    pf = pq.ParquetFile(f)
                    for g in range(pf.num_row_groups):
                        t = pf.read_row_group(g).cast(_shards.SCHEMA)
                        if sel is not None:
                            t = _filter_index(t, selected=sel)
                        yield t if decode is None else BlockAccessor.batch_to_block(decode_batch(t, **decode))
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{path}: unreadable parquet shard ({e})") from e

        return [ReadTask(lambda fs=self._fs, p=p, sel=sel, dec=self._decode: read(fs, p, sel, dec),
                         BlockMetadata(num_rows=n if sel is None else len(sel), size_bytes=None,
                                       input_files=[p], exec_stats=None),
                         schema=_shards.SCHEMA if self._decode is None else None)
                for p, n, sel in zip(self._paths, self._rows, self._selected)]


def read_dataset(uri: Union[str, Manifest], *, s3_endpoint: Optional[str] = None,
                 storage_options: Optional[dict[str, Any]] = None,
                 indices: Optional[Union[Sequence[int], np.ndarray]] = None,
                 layout: Layout = "chw", shuffle_seed: Optional[int] = None, epoch: int = 0,
                 decode: bool = True, check_shards: bool = True) -> "ray.data.Dataset":
    """A lazily read ``ray.data.Dataset`` over a manifest's shards.

    Args:
        uri: dataset folder / manifest URI (local or ``s3://``) or a :class:`Manifest`.
        s3_endpoint: S3 endpoint URL (``DataConfig.s3_endpoint``); else the AWS variables.
        indices: keep only these global indices (RCS coresets); shards holding none of them
            are not even read, the rest are filtered by :func:`select_indices` before decoding.
        layout: ``"chw"`` (default) -> image (3,H,W); ``"hwc"`` -> (H,W,3).
        shuffle_seed, epoch: per-epoch order (see the module docstring); None = source order
            (Ray may still interleave blocks unless ``preserve_order`` is set).
        decode: False keeps the raw parquet columns (image as bytes).
        check_shards: read each shard footer on the driver first (clear errors, fail early).

    Returns:
        ``ray.data.Dataset`` with columns ``image``, ``label``, ``index``.
    """
    kw = dict(s3_endpoint=s3_endpoint, storage_options=storage_options)
    m = uri if isinstance(uri, Manifest) else read_manifest(uri, **kw)
    shard_list = list(m.shards)
    selected: Optional[np.ndarray] = None
    if indices is not None:
        selected = _sorted_unique(indices)
        if selected.size and (selected[0] < 0 or selected[-1] >= m.count):
            raise DataError(f"{m.base_uri}: index out of range 0..{m.count - 1}")
        firsts = np.array([s.first_index for s in shard_list])
        keep = set((np.searchsorted(firsts, selected, side="right") - 1).tolist())
        shard_list = [s for k, s in enumerate(shard_list) if k in keep]
        if not shard_list:
            raise DataError(f"{m.base_uri}: empty index selection")
    if shuffle_seed is not None:
        order = _seed_for(shuffle_seed, epoch).permutation(len(shard_list))
        shard_list = [shard_list[k] for k in order]
    locs = [resolve(m.shard_uri(s), **kw) for s in shard_list]
    fs = locs[0].fs
    paths = [loc.path for loc in locs]
    if check_shards:
        _check_shard_footers(Manifest(**{**m.__dict__, "shards": tuple(shard_list)}), fs, paths)
    sel_per_shard = None
    if selected is not None:
        sel_per_shard = [selected[(selected >= sh.first_index) & (selected < sh.first_index + sh.rows)]
                         for sh in shard_list]
    dec = None
    if decode:
        dec = dict(image_shape=tuple(m.image_shape), layout=layout, shuffle_seed=shuffle_seed, epoch=epoch,
                   shard_firsts=[s.first_index for s in m.shards], shard_uris=[m.shard_uri(s) for s in m.shards])
    # [2] lazy read: one task per shard straight from the manifest (no file listing), filtering
    # and decoding inside the read task (one fused operator)
    ds = ray.data.read_datasource(ShardDatasource(fs, paths, [s.rows for s in shard_list],
                                                  selected=sel_per_shard, decode=dec))
    if shuffle_seed is not None:
        ds = ds.randomize_block_order(seed=int(_seed_for(shuffle_seed, epoch, 1)  # [3]
                                                .integers(2**31)))
    return ds


# ----------------------------------------------------------------------------------------------
# Checksums
# ----------------------------------------------------------------------------------------------

_VERIFIED: set[tuple] = set()  # (uri, sha256, size, mtime_ns) verified by this process


def _hash_file(uri: str, s3_endpoint: Optional[str], storage_options: Optional[dict]
               ) -> tuple[str, str]:
    """("ok", sha256 hex) or ("error", one-line message naming ``uri``)."""
    loc = resolve(uri, s3_endpoint=s3_endpoint, storage_options=storage_options)
    h = hashlib.sha256()
    try:
        with loc.fs.open_input_stream(loc.path) as f:
            while True:
                chunk = f.read(8 << 20)
                if not chunk:
                    break
                h.update(chunk)
    except FileNotFoundError:
        return "error", f"{uri}: shard listed in the manifest is missing"
    except (OSError, ValueError) as e:
        return "error", str(wrap_os_error(e, uri, "read"))
    return "ok", h.hexdigest()


@ray.remote(num_cpus=0.5)
def _hash_files_task(uris: list[str], s3_endpoint: Optional[str], storage_options: Optional[dict]
                     ) -> list[tuple[str, str]]:
    return [_hash_file(u, s3_endpoint, storage_options) for u in uris]  # [8] one task per group


def _version(fs: Any, path: str) -> tuple:
    try:
        info = fs.get_file_info(path)
        return (info.size, info.mtime_ns) if info.mtime_ns is not None else (info.size,)
    except OSError:
        return ()


def verify_shards(uri: Union[str, Manifest], *, s3_endpoint: Optional[str] = None,
                  storage_options: Optional[dict[str, Any]] = None, use_ray: Optional[bool] = None,
                  cache: bool = True) -> dict[str, Any]:
    """Check every shard's sha256 against the manifest; DataError naming the first bad shard.

    Shards are hashed in parallel Ray tasks (``use_ray=None``: when Ray is up and there is more
    than one shard), each shard version once per process (``cache``). Returns
    ``{"shards": n hashed, "bytes": b, "seconds": t}``.
    """
    kw = dict(s3_endpoint=s3_endpoint, storage_options=storage_options)
    m = uri if isinstance(uri, Manifest) else read_manifest(uri, **kw)
    t0 = time.perf_counter()
    todo = []
    for s in m.shards:
        u = m.shard_uri(s)
        loc = resolve(u, **kw)
        key = (u, s.sha256, *_version(loc.fs, loc.path))
        if not (cache and key in _VERIFIED):
            todo.append((s, u, key))
    if use_ray is None:
        use_ray = ray.is_initialized() and len(todo) > 1
    uris = [u for _, u, _ in todo]
    if use_ray and uris:
        n_tasks = max(1, min(len(uris), int(ray.cluster_resources().get("CPU", 1)) * 2))
        groups = [uris[i::n_tasks] for i in range(n_tasks)]
        refs = [_hash_files_task.remote(g, s3_endpoint, storage_options) for g in groups]
        got: dict[str, tuple[str, str]] = {}
        for g, res in zip(groups, ray.get(refs)):
            got.update(zip(g, res))
        results = [got[u] for u in uris]
    else:
        results = [_hash_file(u, s3_endpoint, storage_options) for u in uris]
    n_bytes = 0
    for (s, u, key), (status, value) in zip(todo, results):
        if status == "error":
            raise DataError(value)
        if value != s.sha256:
            raise DataError(f"{u}: checksum mismatch (sha256 {value[:12]}..., manifest says "
                            f"{s.sha256[:12]}...): the shard is corrupt or was replaced; rewrite "
                            f"the dataset with jobs.prepare_data")
        if len(key) > 2:
            n_bytes += int(key[2])
    if cache:
        _VERIFIED.update(key for _, _, key in todo)
    return {"shards": len(todo), "bytes": n_bytes, "seconds": time.perf_counter() - t0}


def select_indices(ds: "ray.data.Dataset", indices: Union[Sequence[int], np.ndarray]
                   ) -> "ray.data.Dataset":
    """Rows of ``ds`` whose ``index`` is in ``indices``, without copying the dataset.

    The sorted unique index array is put in the object store once and each block is filtered
    with a binary search (a lazy ``map_batches``); nothing is materialised. Works on raw
    (pyarrow) and decoded datasets; apply it before decoding when you can (less work).
    """
    selected = _sorted_unique(indices)
    ref = ray.put(selected)  # [5] one shared copy for all blocks/workers
    # pyarrow batches: filtering a table is zero-copy-friendly for raw bytes and for Ray's
    # tensor columns alike, so one code path serves raw and decoded datasets.
    return ds.map_batches(_filter_index, batch_format="pyarrow", batch_size=None,  # [6]
                          zero_copy_batch=True, fn_kwargs=dict(selected=ref))
