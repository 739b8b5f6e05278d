"""Record encoding round trip and window / quantization math."""

import numpy as np
import pytest

from lesionjax.core import records
from lesionjax.core.windows import parse_windows, uint8_to_unit, window_to_uint8


def test_record_round_trip_preserves_arrays_and_ids():
    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.integers(0, 256, (7, 5, 3), dtype=np.uint8),
        "mask": rng.integers(0, 2, (7, 5), dtype=np.uint8),
        "labels": np.array([1, 0, 1, 0, 0, 1], np.uint8),
        "spacing": np.array([0.45, 0.45, 5.0], np.float64),
        "big_endian": np.arange(4, dtype=">i4"),
    }
    out = records.decode_record(records.encode_record("case_7", 12, arrays))
    assert out["case"] == "case_7" and out["slice"] == 12
    for name, array in arrays.items():
        np.testing.assert_array_equal(out[name], array)
        assert out[name].shape == array.shape
    assert out["big_endian"].dtype == np.dtype("<i4")


def test_record_decoding_is_a_view_not_a_pickle():
    rec = records.encode_record("a", 0, {"image": np.zeros((4, 4, 1), np.uint8)})
    assert b"pickle" not in rec and rec.startswith(records.MAGIC)
    out = records.decode_record(rec)
    assert not out["image"].flags.writeable  # np.frombuffer over the record's bytes


def test_decoding_rejects_foreign_bytes():
    with pytest.raises(ValueError, match="not a lesionjax slice record"):
        records.decode_record(b"\x00\x01garbage")


def test_window_maps_bounds_to_0_and_255_and_clips():
    hu = np.array([-1000.0, -50.0, 50.0, 150.0, 3000.0])
    out = window_to_uint8(hu, [(-50.0, 150.0)])[:, 0]
    np.testing.assert_array_equal(out, [0, 0, 128, 255, 255])  # 50 HU: 127.5 rounds to even 128


def test_one_channel_per_window():
    out = window_to_uint8(np.zeros((2, 3)), parse_windows(["brain", "subdural", "wide"]))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    # 0 HU is the bottom of [0, 80], 1/10 of [-20, 180] and 150/380 of [-150, 230].
    np.testing.assert_array_equal(out[0, 0], [0, round(255 * 20 / 200), round(255 * 150 / 380)])


def test_quantization_error_is_at_most_half_a_step():
    lo, hi = -50.0, 150.0
    hu = np.linspace(lo, hi, 10001)
    # Back to HU by hand: lo + unit * (hi - lo).
    back = lo + uint8_to_unit(window_to_uint8(hu, [(lo, hi)])[:, 0]) * (hi - lo)
    assert np.abs(back - hu).max() <= (hi - lo) / 510 + 1e-4


def test_parse_windows_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown window 'nope'"):
        parse_windows(["nope"])
    with pytest.raises(ValueError, match="must exceed"):
        parse_windows([(80, 0)])
