// The CPU kernels of decoding (quantize/compiled.py lists them).
//
// fused_linear: y = x W^T for a few rows of x, read from the codes of a packed Linear without building W
// (quantize/fused.py describes the layout). For each column group g of the weight and each output row r:
//   y[r] += scale[g][r] * (sum over columns c of g of code[c][r] * x[c] + (qmin - zero[g][r]) * sum of x[c]),
// the grid's (code + qmin - zero) * scale summed in another order, all in float32.
//
// fake_quantize, kv_encode, kv_decode: the same float32 operations, in the same order, as the torch code they
// replace (quantize/quantizer.py, quantize/kvcache.py), so the same results bit for bit: a division (not a product
// by the reciprocal), rounding half to even (nearbyint, as torch.round), clamps, no fused multiply-add.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <array>
#include <cmath>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlockRows = 32;              // output rows of one block: their sums stay in vector registers
constexpr int64_t kBlockBytes = kBlockRows / 2;  // a block's codes of one column: two rows a byte
constexpr int64_t kPrefetchColumns = 64;         // codes read this far ahead (the weights come from L3 or memory)

// acc[j] = sum over columns c in [c0, c1) of code(c, j) * x[c], for the 32 rows of one block
inline void block_sums(const uint8_t* block, const float* x, int64_t c0, int64_t c1, float* acc) {
#if defined(__AVX512F__)
  // 16 rows a register, two sums per half of the block (alternate columns), so that consecutive multiply-adds do
  // not wait for each other
  const __m512i low_nibble = _mm512_set1_epi32(15);
  __m512 low[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, high[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int64_t c = c0; c < c1; ++c) {
    if (c % 4 == 0) _mm_prefetch(reinterpret_cast<const char*>(block + (c + kPrefetchColumns) * 16), _MM_HINT_T0);
    const __m512 xc = _mm512_set1_ps(x[c]);
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + c * 16)));
    const int64_t k = c & 1;
    low[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(bytes, low_nibble)), xc, low[k]);
    high[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4)), xc, high[k]);
  }
  _mm512_storeu_ps(acc, _mm512_add_ps(low[0], low[1]));
  _mm512_storeu_ps(acc + 16, _mm512_add_ps(high[0], high[1]));
#else
  for (int64_t c = c0; c < c1; ++c) {
    const uint8_t* pair = block + c * kBlockBytes;
    for (int64_t j = 0; j < kBlockBytes; ++j) {  // a loop the compiler vectorizes
      acc[j] += static_cast<float>(pair[j] & 15) * x[c];
      acc[j + kBlockBytes] += static_cast<float>(pair[j] >> 4) * x[c];
    }
  }
#endif
}

template <typename zero_t>
void fused_blocks(const float* xs, const float* group_sums, int64_t n, int64_t cols, const uint8_t* codes,
                  const int32_t* starts, const float* scale, const zero_t* zero, int64_t n_groups, int64_t rows,
                  int64_t qmin, float* y) {
  // xs [n, cols]: x's columns in group order; group_sums [n, n_groups]. Blocks of rows run in parallel, each
  // reading its own contiguous codes [cols, kBlockBytes], all the rows of x at once (they are read again from L1).
  at::parallel_for(0, rows / kBlockRows, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const uint8_t* block = codes + k * cols * kBlockBytes;
      const int64_t r0 = k * kBlockRows;
      for (int64_t i = 0; i < n; ++i) {
        const float* xi = xs + i * cols;
        std::array<float, kBlockRows> out{};
        for (int64_t g = 0; g < n_groups; ++g) {
          std::array<float, kBlockRows> acc{};
          block_sums(block, xi, starts[g], starts[g + 1], acc.data());
          const float sum = group_sums[i * n_groups + g];
          const float* s = scale + g * rows + r0;
          const zero_t* z = zero + g * rows + r0;
          for (int64_t j = 0; j < kBlockRows; ++j) {
            out[j] += s[j] * (acc[j] + static_cast<float>(qmin - z[j]) * sum);
          }
        }
        std::copy(out.begin(), out.end(), y + i * rows + r0);
      }
    }
  });
}

torch::Tensor fused_linear(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& starts,
                           const torch::Tensor& perm, const torch::Tensor& scale, const torch::Tensor& zero,
                           int64_t qmin) {
  for (const auto* t : {&x, &codes, &starts, &perm, &scale, &zero}) {
    TORCH_CHECK(t->is_cpu() && t->is_contiguous(), "the fused kernel takes contiguous CPU tensors");
  }
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat, "x: float32 [n, cols]");
  TORCH_CHECK(codes.scalar_type() == torch::kUInt8 && starts.scalar_type() == torch::kInt &&
              perm.scalar_type() == torch::kInt && scale.scalar_type() == torch::kFloat, "layout dtypes");
  const int64_t n = x.size(0), cols = x.size(1), n_groups = scale.size(0), rows = scale.size(1);
  TORCH_CHECK(rows % kBlockRows == 0 && codes.numel() == cols * rows / 2 && perm.numel() == cols &&
              starts.numel() == n_groups + 1, "layout shapes");
  // x's columns in group order and each group's sum of them, once for every block
  std::vector<float> xs(n * cols), group_sums(n * n_groups);
  const float* xp = x.data_ptr<float>();
  const int32_t* pp = perm.data_ptr<int32_t>();
  const int32_t* sp = starts.data_ptr<int32_t>();
  float* xsp = xs.data();
  float* gsp = group_sums.data();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t g = 0; g < n_groups; ++g) {
      float sum = 0.f;
      for (int64_t c = sp[g]; c < sp[g + 1]; ++c) {
        xsp[i * cols + c] = xp[i * cols + pp[c]];
        sum += xsp[i * cols + c];
      }
      gsp[i * n_groups + g] = sum;
    }
  }
  auto y = torch::empty({n, rows}, x.options());
  AT_DISPATCH_INTEGRAL_TYPES(zero.scalar_type(), "fused_linear", [&] {
    fused_blocks<scalar_t>(xsp, gsp, n, cols, codes.data_ptr<uint8_t>(), sp, scale.data_ptr<float>(),
                           zero.data_ptr<scalar_t>(), n_groups, rows, qmin, y.data_ptr<float>());
  });
  return y;
}


constexpr int64_t kRowGrain = 16;  // rows of an activation per parallel task: one decoded token stays serial

void check_float_rows(const torch::Tensor& t, int64_t channels, const char* what) {
  TORCH_CHECK(t.is_cpu() && t.is_contiguous() && t.scalar_type() == torch::kFloat && t.dim() >= 1 &&
              t.size(-1) == channels, what, ": contiguous float32 CPU [..., ", channels, "]");
}

// x [..., C] -> clamp(nearbyint(x / s), qmin - z, qmax - z) * s, s = scale[index[c]] and z = zero[index[c]] for
// channel c: ActQuantizer's static grid of clusters
torch::Tensor fake_quantize(const torch::Tensor& x, const torch::Tensor& index, const torch::Tensor& scale,
                            const torch::Tensor& zero, int64_t qmin, int64_t qmax) {
  const int64_t channels = index.numel(), clusters = scale.numel();
  check_float_rows(x, channels, "x");
  TORCH_CHECK(index.is_cpu() && index.is_contiguous() && index.scalar_type() == torch::kInt, "index: int32");
  TORCH_CHECK(scale.is_cpu() && scale.is_contiguous() && scale.scalar_type() == torch::kFloat &&
              zero.is_cpu() && zero.is_contiguous() && zero.scalar_type() == torch::kInt &&
              zero.numel() == clusters, "scale float32 and zero int32 [clusters]");
  const int32_t* idx = index.data_ptr<int32_t>();
  for (int64_t c = 0; c < channels; ++c) TORCH_CHECK(idx[c] >= 0 && idx[c] < clusters, "a cluster id out of range");
  auto y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *s = scale.data_ptr<float>();
  const int32_t* z = zero.data_ptr<int32_t>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, x.numel() / channels, kRowGrain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t c = 0; c < channels; ++c) {
        const float sc = s[idx[c]], zc = static_cast<float>(z[idx[c]]);
        const float low = static_cast<float>(qmin) - zc, high = static_cast<float>(qmax) - zc;
        yp[t * channels + c] = std::min(std::max(std::nearbyint(xp[t * channels + c] / sc), low), high) * sc;
      }
    }
  });
  return y;
}

// x [rows, C] -> codes uint8 [rows, ceil(C * bits / 8)]: clamp(nearbyint(x / scale) + zero, qmin, qmax) - qmin,
// packed as quantize/pack.py does (one little-endian bit stream per row)
torch::Tensor kv_encode(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& zero,
                        int64_t bits) {
  const int64_t channels = scale.numel();
  check_float_rows(x, channels, "x");
  for (const auto* t : {&scale, &zero}) check_float_rows(*t, channels, "a per-channel grid");
  TORCH_CHECK(bits >= 1 && bits <= 8, "codes of 1 to 8 bits");
  const int64_t rows = x.numel() / channels, bytes = (channels * bits + 7) / 8;
  const float qmin = -std::ldexp(1.f, bits - 1), qmax = std::ldexp(1.f, bits - 1) - 1;
  auto codes = torch::zeros({rows, bytes}, x.options().dtype(torch::kUInt8));
  const float *xp = x.data_ptr<float>(), *s = scale.data_ptr<float>(), *z = zero.data_ptr<float>();
  uint8_t* out = codes.data_ptr<uint8_t>();
  at::parallel_for(0, rows, kRowGrain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      uint8_t* row = out + t * bytes;
      for (int64_t c = 0; c < channels; ++c) {
        const float q = std::min(std::max(std::nearbyint(xp[t * channels + c] / s[c]) + z[c], qmin), qmax);
        const uint32_t code = static_cast<uint32_t>(q - qmin) << (c * bits % 8);  // bits from the code's first
        row[c * bits / 8] |= static_cast<uint8_t>(code);
        if (c * bits % 8 + bits > 8) row[c * bits / 8 + 1] |= static_cast<uint8_t>(code >> 8);
      }
    }
  });
  return codes;
}

// codes uint8 [b, t, ceil(C * bits / 8)] -> float32 [b, heads, t, C / heads], attention's layout:
// (code + offset) * scale, offset = qmin - zero, channel c = head * (C / heads) + i
torch::Tensor kv_decode(const torch::Tensor& codes, const torch::Tensor& offset, const torch::Tensor& scale,
                        int64_t bits, int64_t heads) {
  const int64_t channels = scale.numel(), bytes = (channels * bits + 7) / 8;
  for (const auto* t : {&offset, &scale}) check_float_rows(*t, channels, "a per-channel grid");
  TORCH_CHECK(codes.is_cpu() && codes.is_contiguous() && codes.scalar_type() == torch::kUInt8 &&
              codes.dim() == 3 && codes.size(2) == bytes, "codes: contiguous uint8 CPU [b, t, ", bytes, "]");
  TORCH_CHECK(bits >= 1 && bits <= 8, "codes of 1 to 8 bits");
  TORCH_CHECK(heads >= 1 && channels % heads == 0, "channels split into whole heads");
  const int64_t batch = codes.size(0), tokens = codes.size(1), dim = channels / heads;
  auto y = torch::empty({batch, heads, tokens, dim}, codes.options().dtype(torch::kFloat));
  const uint8_t* in = codes.data_ptr<uint8_t>();
  const float *o = offset.data_ptr<float>(), *s = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const uint32_t mask = (1u << bits) - 1;
  at::parallel_for(0, batch * tokens, kRowGrain, [&](int64_t r0, int64_t r1) {
    std::vector<float> row_values(channels);
    float* out = row_values.data();
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = in + r * bytes;
      if (bits == 4) {  // the common case, two codes a byte: a loop the compiler vectorizes
        for (int64_t b = 0; b < channels / 2; ++b) {
          out[2 * b] = (static_cast<float>(row[b] & 15) + o[2 * b]) * s[2 * b];
          out[2 * b + 1] = (static_cast<float>(row[b] >> 4) + o[2 * b + 1]) * s[2 * b + 1];
        }
        if (channels % 2) {
          const int64_t c = channels - 1;
          out[c] = (static_cast<float>(row[c / 2] & 15) + o[c]) * s[c];
        }
      } else {
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t first = c * bits;  // a code of at most 8 bits spans at most two bytes
          uint32_t word = row[first / 8];
          if (first % 8 + bits > 8) word |= static_cast<uint32_t>(row[first / 8 + 1]) << 8;
          out[c] = (static_cast<float>((word >> (first % 8)) & mask) + o[c]) * s[c];
        }
      }
      const int64_t b = r / tokens, t = r % tokens;
      for (int64_t h = 0; h < heads; ++h) {
        std::copy(out + h * dim, out + (h + 1) * dim, yp + ((b * heads + h) * tokens + t) * dim);
      }
    }
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_linear", &fused_linear, "y [n, rows] from x [n, cols] and a packed Linear's fused layout");
  m.def("fake_quantize", &fake_quantize, "x on a static per-channel grid");
  m.def("kv_encode", &kv_encode, "K/V codes, packed, from x [rows, C]");
  m.def("kv_decode", &kv_decode, "K/V from their packed codes");
}
