"""Data safety (issue 10): prepare_data checks everything before writing; a shard with flipped
pixel bytes (parquet footer intact) is refused naming the shard file."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.prepare_data import main as prepare_main
from pipeline.data.shards import read_manifest, write_dataset
from pipeline.data.storage import DataError


def test_generated_never_writes_into_a_users_folder(tmp_path, capsys):
    src = tmp_path / "raw"
    src.mkdir()
    (src / "val_data").write_bytes(b"the user's own file")
    rc = prepare_main(["generated", str(src), str(tmp_path / "out"), "--train-per-class", "2", "--val-per-class", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and str(src) in err and "not empty" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in src.iterdir()) == ["val_data"]
    assert (src / "val_data").read_bytes() == b"the user's own file"


def test_existing_dest_is_refused_before_src_is_written(tmp_path, capsys):
    src, dest = tmp_path / "raw", tmp_path / "out"
    args = ["--train-per-class", "2", "--val-per-class", "1", "--classes", "2"]
    assert prepare_main(["generated", str(tmp_path / "first"), str(dest), *args]) == 0
    capsys.readouterr()
    rc = prepare_main(["generated", str(src), str(dest), *args])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert not src.exists()  # nothing generated


def test_generated_src_can_be_reused_for_the_other_split(tmp_path):
    src = tmp_path / "raw"
    args = ["--train-per-class", "2", "--val-per-class", "1", "--classes", "2"]
    assert prepare_main(["generated", str(src), str(tmp_path / "train"), *args]) == 0
    before = (src / "val_data").stat().st_mtime_ns
    assert prepare_main(["generated", str(src), str(tmp_path / "val"), "--split", "val", *args]) == 0
    assert (src / "val_data").stat().st_mtime_ns == before  # ours, same params: reused as is
    assert read_manifest(str(tmp_path / "val")).count == 2


def _flip_pixels(path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2  # inside the image column's data pages, far from the footer
    data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    path.write_bytes(bytes(data))


def test_flipped_pixel_bytes_are_caught_naming_the_shard(tmp_path):
    from pipeline.data.ray_datasets import verify_shards

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 40)
    m = write_dataset([(images, labels)], str(tmp_path / "d"), dataset="t", split="train",
                      image_shape=(8, 8, 3), num_classes=4, shard_size=10)
    assert verify_shards(m, use_ray=False, cache=False)["shards"] == 4
    bad = tmp_path / "d" / "part-00002.parquet"
    _flip_pixels(bad)
    assert pq.read_table(bad).num_rows == 10  # still parses: only a checksum can tell
    with pytest.raises(DataError, match=r"part-00002\.parquet: checksum mismatch"):
        verify_shards(m, use_ray=False)


def test_failed_start_leaves_no_config_that_blocks_the_corrected_rerun(tmp_path):
    from pipeline.config import PretrainConfig, dump_yaml, load_config
    from pipeline.train.driver import pretrain_spec
    from pipeline.train.segments import RunFinishedError, SegmentedRun

    def run(manifest: str) -> SegmentedRun:
        cfg = load_config(PretrainConfig, "jobs/configs/demo.yaml",
                          [f"--data.manifest={manifest}", f"--run.storage_path={tmp_path}", "--run.name=r"])
        return SegmentedRun(cfg, pretrain_spec(cfg))

    bad = run(str(tmp_path / "typo"))
    bad._check_and_record_config()  # the checks before the data is read: nothing written yet
    assert not (tmp_path / "r" / "config.yaml").exists()
    # a config.yaml left by an older failed start (no checkpoint) does not block the corrected run
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text(dump_yaml(bad.cfg))
    run(str(tmp_path / "data"))._check_and_record_config()
    # ...but once a checkpoint exists, a different config is still refused
    from pipeline.train.checkpoint import TrainState, save_state

    save_state(tmp_path / "r" / "epoch_00001", TrainState(epoch=1, global_step=1, model={}, optimizer={},
                                                           config={}))
    with pytest.raises(RunFinishedError, match="different config"):
        run(str(tmp_path / "other"))._check_and_record_config()


def test_decode_errors_name_the_shard_file_not_ray_batch():
    import pyarrow as pa

    from pipeline.data.ray_datasets import decode_batch

    t = pa.table({"image": pa.array([b"\0" * 5, b"\0" * 5], pa.binary()), "label": [0, 1], "index": [12, 13]})
    with pytest.raises(DataError, match=r"^/d/part-00001\.parquet \(rows from index 12\): image 0 has 5 bytes"):
        decode_batch(t, image_shape=(8, 8, 3), shard_firsts=[0, 10, 20],
                     shard_uris=["/d/part-00000.parquet", "/d/part-00001.parquet", "/d/part-00002.parquet"])
