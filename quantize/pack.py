"""Dense bit packing of unsigned integer codes: n codes of b bits take ceil(n * b / 8) bytes, 3-bit codes included.

The last dimension is one little-endian bit stream: code i occupies bits [i * b, (i + 1) * b), byte j holds bits
[8j, 8j + 8), so a row of any length packs on its own and the leading dimensions are kept. compressed-tensors packs
32 // b codes per int32 word, which pads 3-, 5-, 6- and 7-bit codes; this does not.
"""
import torch
import torch.nn.functional as F

MAX_BITS = 8  # codes are held in uint8


def packed_size(count, bits):
    """Bytes that `count` codes of `bits` bits take."""
    return (count * bits + 7) // 8


def _check_bits(bits):
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"codes are packed at 1 to {MAX_BITS} bits, got {bits}")


def pack_codes(codes, bits):
    """codes: uint8 [..., n], each below 2^bits -> uint8 [..., packed_size(n, bits)]."""
    _check_bits(bits)
    assert codes.dtype == torch.uint8, "codes are uint8"
    n = codes.shape[-1]
    if bits == MAX_BITS:
        return codes.clone()
    if MAX_BITS % bits == 0:  # whole codes per byte: stay in uint8
        per_byte = MAX_BITS // bits
        shifts = torch.arange(0, MAX_BITS, bits, dtype=torch.uint8, device=codes.device)
        grouped = F.pad(codes, (0, -n % per_byte)).unflatten(-1, (-1, per_byte))
        return (grouped << shifts).sum(-1, dtype=torch.uint8)  # disjoint bits: the sum is an OR
    # 8 codes fill exactly `bits` bytes: join them into one integer (at most 56 bits), then cut it into bytes
    grouped = F.pad(codes, (0, -n % 8)).unflatten(-1, (-1, 8)).long()
    words = (grouped << torch.arange(0, 8 * bits, bits, device=codes.device)).sum(-1, keepdim=True)
    packed = (words >> torch.arange(0, 8 * bits, 8, device=codes.device)) & 0xFF
    return packed.flatten(-2)[..., :packed_size(n, bits)].to(torch.uint8)


def unpack_codes(packed, bits, count):
    """The inverse of pack_codes: uint8 [..., packed_size(count, bits)] -> uint8 [..., count]."""
    _check_bits(bits)
    assert packed.dtype == torch.uint8, "packed codes are uint8"
    size = packed_size(count, bits)
    assert packed.shape[-1] == size, f"{count} codes of {bits} bits take {size} bytes"
    if bits == MAX_BITS:
        return packed.clone()
    mask = 2 ** bits - 1
    if MAX_BITS % bits == 0:
        shifts = torch.arange(0, MAX_BITS, bits, dtype=torch.uint8, device=packed.device)
        return ((packed.unsqueeze(-1) >> shifts) & mask).flatten(-2)[..., :count]
    padded = F.pad(packed, (0, -packed.shape[-1] % bits)).unflatten(-1, (-1, bits)).long()
    words = (padded << torch.arange(0, 8 * bits, 8, device=packed.device)).sum(-1, keepdim=True)
    codes = (words >> torch.arange(0, 8 * bits, bits, device=packed.device)) & mask
    return codes.flatten(-2)[..., :count].to(torch.uint8)
