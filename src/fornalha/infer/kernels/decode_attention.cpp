// Decode attention over a float16 KV cache: one new query token per row, read in one pass.
//
// The Python reference is `fornalha.infer.kernels.decode_attention_reference`; the tests check
// the two agree. Why a kernel at all: at decode time each row's attention reads its whole cache
// (keys and values of every earlier token) to do very little arithmetic, so its speed is the speed
// of reading memory. Storing the cache in float16 halves those bytes, but PyTorch's CPU attention
// has no fast float16 path (it is slower than float32). This kernel reads float16 and does all the
// arithmetic in float32.
//
// Shapes (all contiguous):
//   q        [B, Hkv, G, D]      float32 — G query heads share each key/value head (GQA; G=1 for MHA)
//   k, v     [Bmax, Hkv, S, D]   float16 — one cache layer; row b holds lengths[b] valid positions
//   lengths  [B]                 int64   — row b attends to positions 0 .. lengths[b]-1
//   returns  [B, Hkv, G, D]      float32 — softmax(q·kᵀ · scale) · v per row and head
//
// Every (row, head) is computed on its own, in a fixed order: a row's result never depends on
// the other rows of the batch or on how many threads run (batched equals unbatched, bit for bit).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

// float16 -> float32 for one vector of D values, with the CPU's conversion instruction where the
// compiler targets one (-march=native): 16 values at a time with AVX-512, 8 with F16C (AVX2
// machines), 4 with NEON (ARM); one by one otherwise.
inline void to_float(const at::Half* src, float* dst, int64_t D) {
  int64_t d = 0;
#if defined(__AVX512F__)
  for (; d + 16 <= D; d += 16)
    _mm512_storeu_ps(dst + d, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + d))));
#elif defined(__F16C__)
  for (; d + 8 <= D; d += 8)
    _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + d))));
#elif defined(__ARM_NEON)
  for (; d + 4 <= D; d += 4)
    vst1q_f32(dst + d, vcvt_f32_f16(vld1_f16(reinterpret_cast<const __fp16*>(src + d))));
#endif
  for (; d < D; ++d) dst[d] = static_cast<float>(src[d]);
}

// float32 -> float16 (round to nearest even) for one vector of D values, the reverse of to_float.
inline void to_half(const float* src, at::Half* dst, int64_t D) {
  int64_t d = 0;
#if defined(__AVX512F__)
  for (; d + 16 <= D; d += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__F16C__)
  for (; d + 8 <= D; d += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + d),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__ARM_NEON)
  for (; d + 4 <= D; d += 4)
    vst1_f16(reinterpret_cast<__fp16*>(dst + d), vcvt_f16_f32(vld1q_f32(src + d)));
#endif
  for (; d < D; ++d) dst[d] = static_cast<at::Half>(src[d]);
}

inline float dot(const float* a, const float* b, int64_t D) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < D; ++d) acc += a[d] * b[d];
  return acc;
}

inline void axpy(float alpha, const float* x, float* y, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) y[d] += alpha * x[d];
}

constexpr int64_t kMaxHeadDim = 256;

// One (row, kv head): its n cached positions against its G query heads, in three passes —
// scores = q·kᵀ·scale, softmax, out = Σ_j p_j·v_j — keys and values each read once.
// kD > 0: the head size as a compile-time constant (loops fully unrolled); kD = 0: any D.
template <int64_t kD>
void attend_one(const float* q, const at::Half* k, const at::Half* v, int64_t n, int64_t G,
                int64_t head_dim, float scale, float* out, std::vector<float>& scores) {
  const int64_t D = kD > 0 ? kD : head_dim;
  alignas(64) float row[kD > 0 ? kD : kMaxHeadDim];
  scores.resize(G * n);
  for (int64_t j = 0; j < n; ++j) {
    to_float(k + j * D, row, D);
    for (int64_t g = 0; g < G; ++g) scores[g * n + j] = dot(q + g * D, row, D) * scale;
  }
  for (int64_t g = 0; g < G; ++g) {
    float* s = scores.data() + g * n;
    const float m = *std::max_element(s, s + n);
    float sum = 0.f;
    for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - m));
    const float inv = 1.f / sum;
    for (int64_t j = 0; j < n; ++j) s[j] *= inv;
  }
  for (int64_t g = 0; g < G; ++g) std::fill(out + g * D, out + (g + 1) * D, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    to_float(v + j * D, row, D);
    for (int64_t g = 0; g < G; ++g) axpy(scores[g * n + j], row, out + g * D, D);
  }
}

#if defined(__AVX512F__)
// The common case on AVX-512 machines, one query head per key/value head (G = 1) and a head size
// that fills whole 16-float registers: the same three passes with the query and the output held
// in registers, and the float16 keys and values converted as they are loaded.
template <int64_t kD>
void attend_one_avx512(const float* q, const at::Half* k, const at::Half* v, int64_t n, float scale,
                       float* out, std::vector<float>& scores) {
  constexpr int64_t R = kD / 16;
  __m512 qv[R], o0[R], o1[R];
  for (int64_t r = 0; r < R; ++r) qv[r] = _mm512_loadu_ps(q + 16 * r);
  auto load = [](const at::Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); };
  scores.resize(n);
  float* s = scores.data();
  for (int64_t j = 0; j < n; ++j) {
    const at::Half* kj = k + j * kD;
    __m512 acc = _mm512_mul_ps(qv[0], load(kj));
    for (int64_t r = 1; r < R; ++r) acc = _mm512_fmadd_ps(qv[r], load(kj + 16 * r), acc);
    s[j] = _mm512_reduce_add_ps(acc) * scale;
  }
  const float m = *std::max_element(s, s + n);
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - m));
  const float inv = 1.f / sum;
  for (int64_t r = 0; r < R; ++r) o0[r] = o1[r] = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {  // two keys at a time: two independent chains of additions
    const __m512 p0 = _mm512_set1_ps(s[j]), p1 = _mm512_set1_ps(s[j + 1]);
    const at::Half* v0 = v + j * kD;
    for (int64_t r = 0; r < R; ++r) {
      o0[r] = _mm512_fmadd_ps(p0, load(v0 + 16 * r), o0[r]);
      o1[r] = _mm512_fmadd_ps(p1, load(v0 + kD + 16 * r), o1[r]);
    }
  }
  if (j < n) {
    const __m512 p0 = _mm512_set1_ps(s[j]);
    for (int64_t r = 0; r < R; ++r) o0[r] = _mm512_fmadd_ps(p0, load(v + j * kD + 16 * r), o0[r]);
  }
  const __m512 iv = _mm512_set1_ps(inv);
  for (int64_t r = 0; r < R; ++r) _mm512_storeu_ps(out + 16 * r, _mm512_mul_ps(_mm512_add_ps(o0[r], o1[r]), iv));
}
#endif

template <int64_t kD>
void attend_all(const float* q, const at::Half* k, const at::Half* v, const int64_t* lengths,
                int64_t B, int64_t H, int64_t G, int64_t S, int64_t D, float scale, float* out) {
  // One task per (row, kv head), split over PyTorch's threads.
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H;
#if defined(__AVX512F__)
      if constexpr (kD > 0 && kD % 16 == 0) {
        if (G == 1) {
          attend_one_avx512<kD>(q + bh * D, k + bh * S * D, v + bh * S * D, lengths[b], scale, out + bh * D, scores);
          continue;
        }
      }
#endif
      attend_one<kD>(q + bh * G * D, k + bh * S * D, v + bh * S * D, lengths[b], G, D, scale,
                     out + bh * G * D, scores);
    }
  });
}

}  // namespace

torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                               torch::Tensor lengths, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-D");
  TORCH_CHECK(q.scalar_type() == at::kFloat, "q must be float32");
  TORCH_CHECK(k.scalar_type() == at::kHalf && v.scalar_type() == at::kHalf, "k, v must be float16");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "q, k, v must be contiguous");
  TORCH_CHECK(k.sizes() == v.sizes(), "k and v must have the same shape");
  const int64_t B = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3), S = k.size(2);
  TORCH_CHECK(k.size(0) >= B && k.size(1) == H && k.size(3) == D, "cache shape does not match q");
  TORCH_CHECK(D <= kMaxHeadDim, "head_dim must be at most ", kMaxHeadDim, ", got ", D);
  TORCH_CHECK(lengths.scalar_type() == at::kLong && lengths.is_contiguous() && lengths.numel() == B,
              "lengths must be int64 with one entry per row");
  const int64_t* L = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(L[b] >= 1 && L[b] <= S, "lengths must be in 1..S");

  auto out = torch::empty_like(q);
  auto args = std::make_tuple(q.data_ptr<float>(), k.data_ptr<at::Half>(), v.data_ptr<at::Half>(), L,
                              B, H, G, S, D, static_cast<float>(scale), out.data_ptr<float>());
  switch (D) {  // common head sizes get their own copy of the code, with D a constant
    case 16: std::apply(attend_all<16>, args); break;
    case 32: std::apply(attend_all<32>, args); break;
    case 64: std::apply(attend_all<64>, args); break;
    case 128: std::apply(attend_all<128>, args); break;
    default: std::apply(attend_all<0>, args);
  }
  return out;
}

// The decode step's attention from the qkv projection on, in one call: what the Python decode step
// (`fornalha.infer.decode.Decoder.__call__`) does in ~14 small PyTorch operations per layer, whose
// dispatch costs more than their arithmetic at these sizes. For each row b and key/value head:
//   the G query heads and the key head get QK-norm (x / sqrt(mean(x²) + eps) · w, when given) and
//   rotary (x·cos + swap_halves(x)·sin, the full-width tables of `full_width_rotary`) at position
//   pos[b]; the key and the value (as it is) go to the float16 cache at pos[b]; then attention over
//   positions 0..pos[b], as `decode_attention`.
//   h        [B, H + 2·Hkv, D] float32 — the qkv projection: H query heads, Hkv key heads, Hkv value heads
//   qw, kw   [D] float32 QK-norm weights, or empty tensors for no QK-norm
//   cos, sin [S', D] float32 full-width rotary tables (S' >= every pos + 1)
//   pos      [B] int64 — each row's new position
//   k, v     [Bmax, Hkv, S, D] float16 — one cache layer, written at pos
//   returns  [B, H, D] float32
torch::Tensor decode_attention_step(torch::Tensor h, torch::Tensor qw, torch::Tensor kw, double eps,
                                    torch::Tensor cos, torch::Tensor sin, torch::Tensor pos, torch::Tensor k,
                                    torch::Tensor v, double scale) {
  TORCH_CHECK(h.dim() == 3 && h.scalar_type() == at::kFloat && h.is_contiguous(), "h must be [B, H+2Hkv, D] float32");
  TORCH_CHECK(k.dim() == 4 && k.scalar_type() == at::kHalf && v.scalar_type() == at::kHalf && k.is_contiguous() &&
              v.is_contiguous() && k.sizes() == v.sizes(), "k, v must be contiguous float16 [Bmax, Hkv, S, D]");
  const int64_t B = h.size(0), D = h.size(2), Hkv = k.size(1), S = k.size(2), H = h.size(1) - 2 * Hkv;
  TORCH_CHECK(H >= Hkv && H % Hkv == 0 && k.size(0) >= B && k.size(3) == D, "h and the cache do not match");
  TORCH_CHECK(D <= kMaxHeadDim && D % 2 == 0, "head_dim must be even and at most ", kMaxHeadDim);
  const bool norm = qw.numel() > 0;
  TORCH_CHECK(!norm || (qw.numel() == D && kw.numel() == D && qw.scalar_type() == at::kFloat &&
              kw.scalar_type() == at::kFloat && qw.is_contiguous() && kw.is_contiguous()), "QK-norm weights must be [D] float32");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
              sin.is_contiguous() && cos.dim() == 2 && cos.size(1) == D && sin.sizes() == cos.sizes(), "bad rotary tables");
  TORCH_CHECK(pos.scalar_type() == at::kLong && pos.is_contiguous() && pos.numel() == B, "pos must be int64 [B]");
  const int64_t* P = pos.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(P[b] >= 0 && P[b] < S && P[b] < cos.size(0), "pos out of range");

  const int64_t G = H / Hkv;
  auto q = torch::empty({B, Hkv, G, D}, h.options());
  auto lengths = pos + 1;
  const float* hp = h.data_ptr<float>();
  const float* qwp = norm ? qw.data_ptr<float>() : nullptr;
  const float* kwp = norm ? kw.data_ptr<float>() : nullptr;
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  at::Half* kp = k.data_ptr<at::Half>();
  at::Half* vp = v.data_ptr<at::Half>();
  const float feps = static_cast<float>(eps);
  const int64_t half = D / 2;

  // normalize (optional) and rotate one head vector x[D] into out[D]
  auto prepare = [&](const float* x, const float* w, const float* c, const float* sn, float* out) {
    float inv = 1.f;
    if (w != nullptr) {
      float ss = 0.f;
      for (int64_t d = 0; d < D; ++d) ss += x[d] * x[d];
      inv = 1.f / std::sqrt(ss / static_cast<float>(D) + feps);
    }
    alignas(64) float t[kMaxHeadDim];
    for (int64_t d = 0; d < D; ++d) t[d] = w != nullptr ? x[d] * inv * w[d] : x[d];
    for (int64_t d = 0; d < half; ++d) out[d] = t[d] * c[d] + t[d + half] * sn[d];
    for (int64_t d = half; d < D; ++d) out[d] = t[d] * c[d] + t[d - half] * sn[d];
  };

  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float kr[kMaxHeadDim];
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / Hkv, j = bh % Hkv;
      const float* row = hp + b * (H + 2 * Hkv) * D;
      const float* c = cp + P[b] * D;
      const float* sn = sp + P[b] * D;
      for (int64_t g = 0; g < G; ++g) prepare(row + (j * G + g) * D, qwp, c, sn, qp + (bh * G + g) * D);
      prepare(row + (H + j) * D, kwp, c, sn, kr);
      const float* vr = row + (H + Hkv + j) * D;
      at::Half* kd = kp + (bh * S + P[b]) * D;
      at::Half* vd = vp + (bh * S + P[b]) * D;
      to_half(kr, kd, D);
      to_half(vr, vd, D);
    }
  });
  return decode_attention(q, k, v, lengths, scale).view({B, H, D});
}

// The residual add and the next RMSNorm of a decode step, in one call: x += delta (in place, when
// delta is not empty), then returns x / sqrt(mean(x²) + eps) · w per row. At one token per row these
// are a few hundred multiply-adds, and PyTorch's dispatch of the add and of `rms_norm` (~7 µs each
// here) cost far more than the arithmetic: 12 norms and 12 adds were ~15 % of a batch-1 step.
//   x [B, C] float32 (contiguous, modified), delta [B, C] float32 or empty, w [C] float32
torch::Tensor add_rms_norm(torch::Tensor x, torch::Tensor delta, torch::Tensor w, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be [B, C] float32");
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == C, "w must be [C] float32");
  const bool add = delta.numel() > 0;
  if (add) delta = delta.contiguous();
  TORCH_CHECK(!add || (delta.scalar_type() == at::kFloat && delta.sizes() == x.sizes()), "delta must match x");
  auto out = torch::empty_like(x);
  float* xp = x.data_ptr<float>();
  const float* dp = add ? delta.data_ptr<float>() : nullptr;
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float feps = static_cast<float>(eps);
  for (int64_t b = 0; b < B; ++b) {
    float* xr = xp + b * C;
    if (add) {
      const float* dr = dp + b * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) xr[c] += dr[c];
    }
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; ++c) ss += xr[c] * xr[c];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(C) + feps);
    float* orow = op + b * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) orow[c] = xr[c] * inv * wp[c];
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // Without the GIL: the HTTP thread of a server keeps running while a step attends.
  m.def("decode_attention", &decode_attention, "decode attention over a float16 KV cache",
        py::call_guard<py::gil_scoped_release>());
  m.def("decode_attention_step", &decode_attention_step,
        "QK-norm, rotary, cache write and attention of a decode step", py::call_guard<py::gil_scoped_release>());
  m.def("add_rms_norm", &add_rms_norm, "x += delta, then RMSNorm(x) · w (a decode step's residual and norm)");
}
