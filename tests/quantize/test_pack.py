"""quantize/pack.py: dense bit packing on its own."""
import pytest
import torch

from quantize.pack import pack_codes, pack_wide, packed_size, unpack_codes, unpack_wide


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 3, 7, 8, 13, 64, 1001])
def test_pack_then_unpack_gives_the_codes_back_in_dense_bytes(bits, count):
    gen = torch.Generator().manual_seed(bits * 1000 + count)
    codes = torch.randint(0, 2 ** bits, (2, 3, count), generator=gen, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3, -(-count * bits // 8))
    assert torch.equal(unpack_codes(packed, bits, count), codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_pack_from_floats_and_unpack_straight_to_float(bits):
    codes = torch.randint(0, 2 ** bits, (3, 21), generator=torch.Generator().manual_seed(bits), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert torch.equal(pack_codes(codes.float(), bits), packed)
    unpacked = unpack_codes(packed, bits, 21, torch.float32)
    assert unpacked.dtype == torch.float32 and torch.equal(unpacked, codes.float())


def test_each_row_packs_on_its_own():
    codes = torch.randint(0, 8, (5, 11), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    packed = pack_codes(codes, 3)
    for row in range(5):
        assert torch.equal(packed[row], pack_codes(codes[row], 3))


@pytest.mark.parametrize("bits, codes, expected", [
    (3, [1, 2, 3], [0b11010001, 0b0]),            # 001, 010, 011 from the lowest bit up; the 9th bit spills over
    (4, [0x3, 0xA, 0xF], [0xA3, 0x0F]),
    (5, [31, 1], [0b00111111, 0b0]),
    (2, [3, 0, 1, 2, 1], [0b10010011, 0b01]),
])
def test_the_bit_layout_is_a_little_endian_stream(bits, codes, expected):
    assert pack_codes(torch.tensor(codes, dtype=torch.uint8), bits).tolist() == expected


def test_sizes_and_bad_input():
    assert packed_size(192, 3) == 72 and packed_size(10, 3) == 4 and packed_size(5, 8) == 5
    with pytest.raises(ValueError, match="1 to 8 bits"):
        pack_codes(torch.zeros(4, dtype=torch.uint8), 9)
    with pytest.raises(AssertionError, match="take 2 bytes"):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, 4)


@pytest.mark.parametrize("bits", [1, 3, 8, 9, 12, 16, 17, 24, 25, 32])
@pytest.mark.parametrize("count", [1, 7, 8, 33])
def test_wide_values_round_trip_in_the_codes_bit_stream(bits, count):
    """Zero points and column groups: any width up to 32 bits, the stream pack_codes writes where both apply."""
    values = torch.randint(0, 2 ** min(bits, 31), (2, count), generator=torch.Generator().manual_seed(bits))
    values[0, 0] = 2 ** bits - 1  # the widest value
    packed = pack_wide(values, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (2, packed_size(count, bits))
    assert torch.equal(unpack_wide(packed, bits, count), values)
    if bits <= 8:
        assert torch.equal(packed, pack_codes(values.to(torch.uint8), bits))
