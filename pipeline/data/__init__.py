"""Data plane: converters, parquet shards + manifest, Ray Data reader, batched augmentation.

Import the submodules directly (``pipeline.data.shards.load_arrays``, ``pipeline.data.storage.
DataError``, ``pipeline.data.transforms.two_views`` ...): this package deliberately imports nothing,
so the torch-only ``transforms`` module also works on a GPU box without pyarrow or Ray.
"""
