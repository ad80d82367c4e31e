"""compressed-tensors packing agrees with the library's own pack_to_int32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

from quantport.formats.compressed_tensors import pack_int32, unpack_int32


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_pack_matches_library(bits):
    rng = np.random.default_rng(bits)
    v = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(5, 72))
    ref = pack_to_int32(torch.tensor(v, dtype=torch.int8), bits).numpy()
    mine = pack_int32(v + (1 << (bits - 1)), bits)
    np.testing.assert_array_equal(mine, ref)
    np.testing.assert_array_equal(unpack_int32(mine, bits, 72) - (1 << (bits - 1)), v)
    ref0 = pack_to_int32(torch.tensor(v, dtype=torch.int8), bits, packed_dim=0).numpy()
    np.testing.assert_array_equal(pack_int32((v + (1 << (bits - 1))).T, bits).T, ref0)
