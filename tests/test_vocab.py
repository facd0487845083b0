import numpy as np

from slam_core.lm.vocab import BOS_ID, EOS_ID, PAD_ID, decode_ids, encode_units, vocab_size


def test_slamkit_vocabulary_layout():
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 1)
    assert vocab_size(500) == 502


def test_units_map_to_ids_shifted_by_two_with_bos_and_eos():
    ids = encode_units([0, 7, 499])
    assert ids.tolist() == [1, 2, 9, 501, 1] and ids.dtype == np.int64
    assert encode_units([3], add_eos=False).tolist() == [1, 5]
    assert encode_units([3], add_bos=False).tolist() == [5, 1]


def test_decode_drops_special_tokens_and_round_trips():
    units = np.array([5, 5, 0, 499, 12])
    assert decode_ids(encode_units(units)).tolist() == units.tolist()
    assert decode_ids([0, 0, 1, 2, 1, 0]).tolist() == [0]
