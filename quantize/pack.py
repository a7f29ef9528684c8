"""Dense bit packing of unsigned integer codes: n codes of b bits take ceil(n * b / 8) bytes, 3-bit codes included.

The last dimension is one little-endian bit stream: code i occupies bits [i * b, (i + 1) * b), byte j holds bits
[8j, 8j + 8), so a row of any length packs on its own and the leading dimensions are kept. compressed-tensors packs
32 // b codes per int32 word, which pads 3-, 5-, 6- and 7-bit codes; this does not.
"""
import torch
import torch.nn.functional as F

MAX_BITS = 8  # codes are held in uint8
WIDE_BITS = 32  # wider whole numbers (a weight's zero points) pack through pack_wide


def packed_size(count, bits):
    """Bytes that `count` codes of `bits` bits take."""
    return (count * bits + 7) // 8


def _check_bits(bits):
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"codes are packed at 1 to {MAX_BITS} bits, got {bits}")


def pack_codes(codes, bits):
    """codes: [..., n], whole numbers below 2^bits, uint8 or floating point (as a quantizer leaves them) -> uint8
    [..., packed_size(n, bits)]."""
    _check_bits(bits)
    assert codes.dtype == torch.uint8 or codes.is_floating_point(), "codes are uint8 or floats"
    n = codes.shape[-1]
    if bits == MAX_BITS:
        return codes.to(torch.uint8, copy=True)
    if MAX_BITS % bits == 0:  # whole codes per byte: disjoint bits, so code i times 2^(i * bits), summed, fits
        per_byte = MAX_BITS // bits
        grouped = (F.pad(codes, (0, -n % per_byte)) if n % per_byte else codes).unflatten(-1, (-1, per_byte))
        packed = grouped[..., 0]
        for i in range(1, per_byte):
            packed = torch.add(packed, grouped[..., i], alpha=2 ** (i * bits))
        return packed.to(torch.uint8)
    # 8 codes fill exactly `bits` bytes: join them into one integer (at most 56 bits), then cut it into bytes
    grouped = F.pad(codes, (0, -n % 8)).unflatten(-1, (-1, 8)).long()
    words = (grouped << torch.arange(0, 8 * bits, bits, device=codes.device)).sum(-1, keepdim=True)
    packed = (words >> torch.arange(0, 8 * bits, 8, device=codes.device)) & 0xFF
    return packed.flatten(-2)[..., :packed_size(n, bits)].to(torch.uint8)


def unpack_codes(packed, bits, count, dtype=torch.uint8):
    """The inverse of pack_codes: uint8 [..., packed_size(count, bits)] -> [..., count] in dtype (float32 straight
    from the bytes saves a pass over the codes where they are to be dequantized)."""
    _check_bits(bits)
    assert packed.dtype == torch.uint8, "packed codes are uint8"
    size = packed_size(count, bits)
    assert packed.shape[-1] == size, f"{count} codes of {bits} bits take {size} bytes"
    if bits == MAX_BITS:
        return packed.to(dtype, copy=True)
    mask = 2 ** bits - 1
    if MAX_BITS % bits == 0:  # one shift by a number per code of a byte, written in place: no stack, no cast
        per_byte = MAX_BITS // bits
        codes = packed.new_empty(*packed.shape, per_byte, dtype=dtype)
        codes[..., 0] = packed & mask
        for i in range(1, per_byte - 1):
            codes[..., i] = (packed >> (i * bits)) & mask
        codes[..., -1] = packed >> (MAX_BITS - bits)  # the last code needs no mask
        return codes.flatten(-2)[..., :count]
    padded = F.pad(packed, (0, -packed.shape[-1] % bits)).unflatten(-1, (-1, bits)).long()
    words = (padded << torch.arange(0, 8 * bits, 8, device=packed.device)).sum(-1, keepdim=True)
    codes = (words >> torch.arange(0, 8 * bits, bits, device=packed.device)) & mask
    return codes.flatten(-2)[..., :count].to(dtype)


def pack_wide(values, bits):
    """Whole numbers 0 .. 2^bits - 1 (bits up to WIDE_BITS, any integer or float dtype) [..., n] -> uint8
    [..., packed_size(n, bits)], in pack_codes' bit stream; bit by bit, for small tensors such as zero points."""
    assert 1 <= bits <= WIDE_BITS, f"wide values are packed at 1 to {WIDE_BITS} bits, got {bits}"
    n = values.shape[-1]
    planes = (values.long().unsqueeze(-1) >> torch.arange(bits, device=values.device)) & 1  # [..., n, bits]
    stream = planes.flatten(-2)  # bit j of value i is bit i * bits + j of the stream
    stream = F.pad(stream, (0, -stream.shape[-1] % 8)).unflatten(-1, (-1, 8))
    return (stream << torch.arange(8, device=values.device)).sum(-1).to(torch.uint8)[..., :packed_size(n, bits)]


def unpack_wide(packed, bits, count):
    """The inverse of pack_wide: uint8 [..., packed_size(count, bits)] -> int64 [..., count]. A value's bits lie in
    the ceil((bits + 7) / 8) bytes from the one holding its first bit: they are read as one integer (int32 where it
    fits) and shifted into place."""
    assert packed.dtype == torch.uint8 and packed.shape[-1] == packed_size(count, bits)
    first_bit = torch.arange(count, device=packed.device) * bits
    start, shift = first_bit // 8, first_bit % 8
    span = (bits + 7 + 7) // 8  # bytes a value can touch
    padded = F.pad(packed, (0, span - 1)).to(torch.int32 if span < 4 else torch.int64)
    word = padded.index_select(-1, start)
    for k in range(1, span):
        word |= padded.index_select(-1, start + k) << (8 * k)
    return ((word >> shift.to(word.dtype)) & (2 ** bits - 1)).long()
