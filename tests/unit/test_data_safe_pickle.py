"""Safe unpickler: admits numpy arrays + plain containers, refuses anything else."""

from __future__ import annotations

import os
import pickle
import subprocess

import numpy as np
import pytest

from pipeline.data.safe_pickle import safe_load, safe_loads
from pipeline.data.storage import DataError


def _release_like() -> dict:
    return {"data": np.arange(2 * 12, dtype=np.uint8).reshape(2, 12), "labels": [1, 1000],
            "mean": np.linspace(0, 1, 12), "scalar": np.uint8(7), b"bytes_key": b"\x00\xff"}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_dict_round_trips_every_protocol(protocol: int) -> None:
    obj = _release_like()
    out = safe_loads(pickle.dumps(obj, protocol=protocol))
    np.testing.assert_array_equal(out["data"], obj["data"])
    assert out["data"].dtype == np.uint8
    assert out["labels"] == [1, 1000]
    np.testing.assert_array_equal(out["mean"], obj["mean"])
    assert out["scalar"] == 7 and out["scalar"].dtype == np.uint8
    assert out[b"bytes_key"] == b"\x00\xff"


def test_numpy1_module_paths_are_admitted() -> None:
    # Files written by numpy 1.x name numpy.core.*; rewrite the GLOBAL opcodes to match.
    raw = pickle.dumps(_release_like(), protocol=2)
    assert b"numpy._core.multiarray" in raw
    old = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert old != raw
    out = safe_loads(old)
    np.testing.assert_array_equal(out["data"], np.arange(24, dtype=np.uint8).reshape(2, 12))


class _SystemCall:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the attack under test
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):  # noqa: ANN204
        return (eval, ("__import__('os').getcwd()",))


class _Popen:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (subprocess.Popen, (["touch", self.marker],))


def test_malicious_os_system_is_refused_and_has_no_effect(tmp_path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "train_data_batch_1"
    bad.write_bytes(pickle.dumps({"data": _SystemCall(str(marker)), "labels": [1]}, protocol=2))
    with pytest.raises(DataError) as ei:
        safe_load(bad)
    msg = str(ei.value)
    assert str(bad) in msg
    assert "refused" in msg and ("posix.system" in msg or "os.system" in msg)
    assert not marker.exists()


def test_malicious_eval_and_subprocess_are_refused(tmp_path) -> None:
    marker = tmp_path / "pwned2"
    with pytest.raises(DataError, match=r"refused to unpickle global 'builtins\.eval'"):
        safe_loads(pickle.dumps(_Eval()), source="x.pkl")
    with pytest.raises(DataError, match=r"x\.pkl: refused to unpickle global 'subprocess\.Popen'"):
        safe_loads(pickle.dumps(_Popen(str(marker))), source="x.pkl")
    assert not marker.exists()


def test_codecs_encode_only_latin1() -> None:
    evil = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(DataError, match="rot13"):
        safe_loads(evil, source="c.pkl")


def test_truncated_pickle_names_file(tmp_path) -> None:
    p = tmp_path / "val_data"
    p.write_bytes(pickle.dumps(_release_like(), protocol=2)[:50])
    with pytest.raises(DataError, match=r"val_data: not a valid dataset pickle"):
        safe_load(p)
