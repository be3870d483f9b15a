// Fused CPU kernels for transformer training (float32), as Paddle custom operators; built and loaded
// by fused_cpu.py. Each op has its backward. Rows are spread over OpenMP threads: Paddle's eager CPU
// elementwise kernels run on one thread and materialise every intermediate, which is where a
// training step's non-GEMM time went (docs/benchmarks.md section 1c).
//
// Dropout keep-masks come from a counter-based hash of (seed, element index): the seed is drawn by the
// caller from Paddle's generator, so paddle.seed and the gradient cache's RNG replay decide the masks,
// and the masks do not depend on how rows are split over threads.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "paddle/extension.h"

#include "bf16_round.h"
#include "heads_gemm.h"

namespace {

// Everything per element is branch-free arithmetic, so g++ -O3 -mavx2 -mfma vectorises the inner loops
// (libm's expf/erff are calls it cannot): a 32-bit hash for dropout, Cephes' expf polynomial, and
// Abramowitz & Stegun 7.1.26 for erf (absolute error <= 1.5e-7).

inline uint32_t mix32(uint32_t x) {  // "lowbias32" (Wellons): a well-mixed 32-bit permutation
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

inline uint32_t seed_key(int64_t seed) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return mix32(static_cast<uint32_t>(s) ^ mix32(static_cast<uint32_t>(s >> 32) + 0x9E3779B9U));
}

inline uint32_t keep_bits(uint32_t key, uint32_t i) { return mix32(i * 0x9E3779B9U + key); }

inline uint32_t drop_threshold(float p) {  // an element is kept when its bits are >= this
  double t = static_cast<double>(p) * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

// Cephes expf: relative error ~1e-7 on [-87, 88]. Below -87.3 (where expf leaves the normal range) it returns
// exactly 0, as Paddle's softmax does for masked positions: clamped to the smallest normal instead, a masked
// position's probability became a denormal after normalising, and every GEMM and FMA that read it took the
// CPU's denormal assist (~100x slower per operation on Intel cores; AMD's Zen has no such penalty).
inline float fast_exp(float x) {
  const bool under = x < -87.3f;
  x = under ? -87.3f : (x > 88.7f ? 88.7f : x);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  q = q * r * r + r + 1.f;
  union { int32_t i; float f; } scale;
  scale.i = (static_cast<int32_t>(n) + 127) << 23;
  return under ? 0.f : q * scale.f;
}

inline float fast_erf(float x) {  // Abramowitz & Stegun 7.1.26
  const float a = x < 0.f ? -x : x;
  const float t = 1.f / (1.f + 0.3275911f * a);
  float y = 1.061405429f;
  y = y * t - 1.453152027f;
  y = y * t + 1.421413741f;
  y = y * t - 0.284496736f;
  y = y * t + 0.254829592f;
  const float e = 1.f - y * t * fast_exp(-a * a);
  return x < 0.f ? -e : e;
}

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

int thread_count() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// body(r, acc) for every row r in [0, n), rows spread over OpenMP threads, where acc[w] is the calling thread's
// partial sum of w columns (bias and LayerNorm weight gradients: column sums over rows). The partial sums are
// added in thread order into out[w] at the end, so a result does not depend on which thread ran first.
template <typename Body>
void rows_with_column_sums(int64_t n, int64_t w, float* out, Body body) {
  const int threads = thread_count();
  std::vector<float> parts(static_cast<size_t>(w) * threads, 0.f);
#pragma omp parallel
  {
    float* acc = parts.data() + static_cast<size_t>(thread_id()) * w;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n; ++r) body(r, acc);
  }
  for (int64_t j = 0; j < w; ++j) {
    float sum = 0.f;
    for (int t = 0; t < threads; ++t) sum += parts[static_cast<size_t>(t) * w + j];
    out[j] = sum;
  }
}


// ------------------------------------------------------------------ per-head batched GEMMs (attention)
// Attention's q·kᵀ, probs·v and their backward GEMMs: batch x [L, d] x [d, L]-sized, d = 32 or 64. For
// --bf16 they were oneDNN's, behind a separate pass that rounded both inputs; here the rounding happens while
// the kernel packs its operands, and a bf16 training step took 4 % less time on an AMD EPYC (Zen 4) host (in
// float32, where nothing is rounded, it is level with Paddle's MKL batched GEMM; docs/benchmarks.md section 14).
// One thread computes one batch element in a fixed order over the contraction, so a result does not depend on
// the thread count. With `bf16` the inputs are rounded to bfloat16 (round to nearest even, as oneDNN's
// conversion does); products of two bfloat16 values are exact in float32, so this is the bfloat16-inputs,
// float32-accumulation GEMM that bf16_ops.cc's weight GEMMs compute.

#ifdef __AVX512F__
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
typedef float lanes_t __attribute__((vector_size(4 * kLanes)));
typedef float lanes_u __attribute__((vector_size(4 * kLanes), aligned(4)));  // unaligned loads and stores
constexpr int kTileRows = 6, kTileVecs = 2, kTileCols = kLanes * kTileVecs;  // 12 accumulators in registers

// c[R, cols] = a[R, k] @ b[k, kTileCols]: a's element (r, j) at a[r * rs + j * ks], b packed row-major (ldb)
template <int R>
inline void gemm_tile(const float* a, int64_t k, int64_t rs, int64_t ks, const float* b, int64_t ldb, float* c,
                      int64_t ldc, int cols) {
  lanes_t acc[R][kTileVecs];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kTileVecs; ++v) acc[r][v] = lanes_t{};
  for (int64_t j = 0; j < k; ++j) {
    lanes_t bv[kTileVecs];
    for (int v = 0; v < kTileVecs; ++v) bv[v] = *reinterpret_cast<const lanes_u*>(b + j * ldb + kLanes * v);
    for (int r = 0; r < R; ++r) {
      const float x = a[r * rs + j * ks];
      for (int v = 0; v < kTileVecs; ++v) acc[r][v] += x * bv[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    if (cols == kTileCols) {
      for (int v = 0; v < kTileVecs; ++v) *reinterpret_cast<lanes_u*>(c + r * ldc + kLanes * v) = acc[r][v];
    } else {
      float row[kTileCols];
      std::memcpy(row, acc[r], sizeof row);
      std::memcpy(c + r * ldc, row, sizeof(float) * cols);
    }
  }
}

// per batch element e: c[e] (m x n) = a[e] @ b[e], a stored [m, k] (or [k, m] with ta), b [k, n] (or [n, k] with tb)
void batched_gemm(const float* a, const float* b, float* c, int64_t batch, int64_t m, int64_t k, int64_t n, bool ta,
                  bool tb, bool bf16) {
  const int64_t ldb = (n + kTileCols - 1) / kTileCols * kTileCols;  // b packed as [k, ldb], zero padded
#pragma omp parallel
  {
    std::vector<float> ap(m * k), bp(k * ldb, 0.f);
#pragma omp for schedule(static)
    for (int64_t e = 0; e < batch; ++e) {
      const float* __restrict ae = a + e * m * k;
      const float* __restrict be = b + e * k * n;
      float* ce = c + e * m * n;
      // a keeps its layout (the tile reads it through strides); b is packed [k, n] for whole-vector loads
#pragma omp simd
      for (int64_t i = 0; i < m * k; ++i) ap[i] = bf16 ? dpr::bf16_round(ae[i]) : ae[i];
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < n; ++j) {
          const float x = tb ? be[j * k + i] : be[i * n + j];
          bp[i * ldb + j] = bf16 ? dpr::bf16_round(x) : x;
        }
      const int64_t rs = ta ? 1 : k, ks = ta ? m : 1;
      for (int64_t j = 0; j < n; j += kTileCols) {
        const int cols = static_cast<int>(std::min<int64_t>(kTileCols, n - j));
        int64_t i = 0;
        for (; i + kTileRows <= m; i += kTileRows)
          gemm_tile<kTileRows>(ap.data() + i * rs, k, rs, ks, bp.data() + j, ldb, ce + i * n + j, n, cols);
        const float* ar = ap.data() + i * rs;
        float* cr = ce + i * n + j;
        switch (m - i) {  // the last rows, fewer than a tile
          case 5: gemm_tile<5>(ar, k, rs, ks, bp.data() + j, ldb, cr, n, cols); break;
          case 4: gemm_tile<4>(ar, k, rs, ks, bp.data() + j, ldb, cr, n, cols); break;
          case 3: gemm_tile<3>(ar, k, rs, ks, bp.data() + j, ldb, cr, n, cols); break;
          case 2: gemm_tile<2>(ar, k, rs, ks, bp.data() + j, ldb, cr, n, cols); break;
          case 1: gemm_tile<1>(ar, k, rs, ks, bp.data() + j, ldb, cr, n, cols); break;
          default: break;
        }
      }
    }
  }
}

}  // namespace

// a [..., m, k]; b [..., k, n], or [..., n, k] with transpose_b -> [..., m, n]; the leading dims are equal
std::vector<paddle::Tensor> HeadsMatmulForward(const paddle::Tensor& a, const paddle::Tensor& b, bool transpose_b,
                                               bool bf16) {
  return dpr::heads_forward(a, b, transpose_b, [bf16](const float* x, const float* y, float* z, int64_t batch,
                                                      int64_t m, int64_t k, int64_t n, bool ta, bool tb) {
    batched_gemm(x, y, z, batch, m, k, n, ta, tb, bf16);
  });
}

std::vector<paddle::Tensor> HeadsMatmulBackward(const paddle::Tensor& a, const paddle::Tensor& b,
                                                const paddle::Tensor& grad_out, bool transpose_b, bool bf16) {
  return dpr::heads_backward(a, b, grad_out, transpose_b, [bf16](const float* x, const float* y, float* z,
                                                                 int64_t batch, int64_t m, int64_t k, int64_t n,
                                                                 bool ta, bool tb) {
    batched_gemm(x, y, z, batch, m, k, n, ta, tb, bf16);
  });
}

// ------------------------------------------------------------------ bias + GELU (exact, erf)

std::vector<paddle::Tensor> BiasGeluForward(const paddle::Tensor& x, const paddle::Tensor& bias) {
  dpr::check_float(x, "x");
  dpr::check_float(bias, "bias");
  const int64_t h = bias.numel(), n = x.numel() / h;
  auto out = paddle::empty(x.shape(), x.dtype(), x.place());
  const float* xp = x.data<float>();
  const float* bp = bias.data<float>();
  float* op = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const float* __restrict xr = xp + r * h;
    float* __restrict orow = op + r * h;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) {
      const float z = xr[j] + bp[j];
      orow[j] = 0.5f * z * (1.f + fast_erf(z * kInvSqrt2));
    }
  }
  return {out};
}

std::vector<paddle::Tensor> BiasGeluBackward(const paddle::Tensor& x, const paddle::Tensor& bias,
                                             const paddle::Tensor& grad_out) {
  const int64_t h = bias.numel(), n = x.numel() / h;
  auto gx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto gb = paddle::empty(bias.shape(), bias.dtype(), bias.place());
  const float* xp = x.data<float>();
  const float* bp = bias.data<float>();
  const float* gp = grad_out.data<float>();
  float* gxp = gx.data<float>();
  rows_with_column_sums(n, h, gb.data<float>(), [&](int64_t r, float* __restrict acc) {
    const float* __restrict xr = xp + r * h;
    const float* __restrict gr = gp + r * h;
    float* __restrict dr = gxp + r * h;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) {
      const float z = xr[j] + bp[j];
      const float cdf = 0.5f * (1.f + fast_erf(z * kInvSqrt2));
      const float d = gr[j] * (cdf + z * kInvSqrt2Pi * fast_exp(-0.5f * z * z));
      dr[j] = d;
      acc[j] += d;
    }
  });
  return {gx, gb};
}

// ------------------------------------------------------------------ LayerNorm(residual + dropout(x + bias))

std::vector<paddle::Tensor> BiasDropoutResidualLnForward(const paddle::Tensor& x, const paddle::Tensor& bias,
                                                         const paddle::Tensor& residual, const paddle::Tensor& gamma,
                                                         const paddle::Tensor& beta, int64_t seed, float p, float eps) {
  for (auto* t : {&x, &bias, &residual, &gamma, &beta}) dpr::check_float(*t, "an input");
  const int64_t h = bias.numel(), n = x.numel() / h;
  auto out = paddle::empty(x.shape(), x.dtype(), x.place());
  auto sum = paddle::empty(x.shape(), x.dtype(), x.place());  // residual + dropout(x + bias), before the norm
  auto mean = paddle::empty({n}, x.dtype(), x.place());
  auto rstd = paddle::empty({n}, x.dtype(), x.place());
  auto keep = paddle::empty(x.shape(), paddle::DataType::UINT8, x.place());
  const float* xp = x.data<float>();
  const float* bp = bias.data<float>();
  const float* rp = residual.data<float>();
  const float* gp = gamma.data<float>();
  const float* btp = beta.data<float>();
  float* op = out.data<float>();
  float* sp = sum.data<float>();
  float* mp = mean.data<float>();
  float* rsp = rstd.data<float>();
  uint8_t* kp = keep.data<uint8_t>();
  const uint32_t threshold = drop_threshold(p), key = seed_key(seed);
  const bool drop = p > 0.f;
  const float scale = drop ? 1.f / (1.f - p) : 1.f;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const int64_t base = r * h;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < h; ++j) {
      const int64_t i = base + j;
      const uint8_t k = drop ? static_cast<uint8_t>(keep_bits(key, static_cast<uint32_t>(i)) >= threshold) : 1;
      kp[i] = k;
      const float v = rp[i] + (k ? (xp[i] + bp[j]) * scale : 0.f);
      sp[i] = v;
      s += v;
    }
    const float mu = s / h;
    float var = 0.f;
#pragma omp simd reduction(+ : var)
    for (int64_t j = 0; j < h; ++j) {
      const float d = sp[base + j] - mu;
      var += d * d;
    }
    const float inv = 1.f / std::sqrt(var / h + eps);
    mp[r] = mu;
    rsp[r] = inv;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) op[base + j] = (sp[base + j] - mu) * inv * gp[j] + btp[j];
  }
  return {out, sum, mean, rstd, keep};
}

std::vector<paddle::Tensor> BiasDropoutResidualLnBackward(const paddle::Tensor& gamma, const paddle::Tensor& sum,
                                                          const paddle::Tensor& mean, const paddle::Tensor& rstd,
                                                          const paddle::Tensor& keep, const paddle::Tensor& grad_out,
                                                          float p) {
  const int64_t h = gamma.numel(), n = sum.numel() / h;
  auto gx = paddle::empty(sum.shape(), sum.dtype(), sum.place());
  auto gres = paddle::empty(sum.shape(), sum.dtype(), sum.place());
  auto gbias = paddle::empty(gamma.shape(), gamma.dtype(), gamma.place());
  auto ggamma = paddle::empty(gamma.shape(), gamma.dtype(), gamma.place());
  auto gbeta = paddle::empty(gamma.shape(), gamma.dtype(), gamma.place());
  const float* gp = gamma.data<float>();
  const float* sp = sum.data<float>();
  const float* mp = mean.data<float>();
  const float* rsp = rstd.data<float>();
  const uint8_t* kp = keep.data<uint8_t>();
  const float* dy = grad_out.data<float>();
  float* gxp = gx.data<float>();
  float* grp = gres.data<float>();
  const float scale = p > 0.f ? 1.f / (1.f - p) : 1.f;
  std::vector<float> sums(3 * h);  // the column sums of the bias's, gamma's and beta's gradients, side by side
  rows_with_column_sums(n, 3 * h, sums.data(), [&](int64_t r, float* __restrict acc) {
    float* __restrict ab = acc;
    float* __restrict ag = acc + h;
    float* __restrict abt = acc + 2 * h;
    const int64_t base = r * h;
    const float mu = mp[r], inv = rsp[r];
    float a = 0.f, b = 0.f;  // sums of dy*gamma and of dy*gamma*xhat
#pragma omp simd reduction(+ : a, b)
    for (int64_t j = 0; j < h; ++j) {
      const float xhat = (sp[base + j] - mu) * inv;
      const float g = dy[base + j] * gp[j];
      a += g;
      b += g * xhat;
      ag[j] += dy[base + j] * xhat;
      abt[j] += dy[base + j];
    }
    const float ma = a / h, mb = b / h;
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) {
      const int64_t i = base + j;
      const float xhat = (sp[i] - mu) * inv;
      const float dz = inv * (dy[i] * gp[j] - ma - xhat * mb);
      grp[i] = dz;
      const float dx = kp[i] ? dz * scale : 0.f;
      gxp[i] = dx;
      ab[j] += dx;
    }
  });
  std::copy(sums.begin(), sums.begin() + h, gbias.data<float>());
  std::copy(sums.begin() + h, sums.begin() + 2 * h, ggamma.data<float>());
  std::copy(sums.begin() + 2 * h, sums.end(), gbeta.data<float>());
  return {gx, gbias, gres, ggamma, gbeta};
}

// ------------------------------------------------------------------ dropout(softmax(scores * scale + mask))

std::vector<paddle::Tensor> SoftmaxDropoutForward(const paddle::Tensor& scores, const paddle::Tensor& mask,
                                                  float scale, int64_t seed, float p) {
  dpr::check_float(scores, "scores");
  dpr::check_float(mask, "mask");
  const auto& shape = scores.shape();  // [B, heads, Lq, Lk]; mask: B * Lk additive values
  PD_CHECK(shape.size() == 4, "scores must be [B, heads, Lq, Lk]");
  const int64_t batch = shape[0], lk = shape[3], rows_per_batch = shape[1] * shape[2];
  PD_CHECK(mask.numel() == batch * lk, "the mask must hold B x Lk values");
  auto out = paddle::empty(shape, scores.dtype(), scores.place());
  auto probs = paddle::empty(shape, scores.dtype(), scores.place());
  auto keep = paddle::empty(shape, paddle::DataType::UINT8, scores.place());
  const float* xp = scores.data<float>();
  const float* mkp = mask.data<float>();
  float* op = out.data<float>();
  float* pp = probs.data<float>();
  uint8_t* kp = keep.data<uint8_t>();
  const uint32_t threshold = drop_threshold(p), key = seed_key(seed);
  const bool drop = p > 0.f;
  const float dscale = drop ? 1.f / (1.f - p) : 1.f;
  const int64_t rows = batch * rows_per_batch;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * lk;
    const float* m = mkp + (r / rows_per_batch) * lk;
    float* prow = pp + base;
    float mx = -3.0e38f;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < lk; ++j) {
      const float v = xp[base + j] * scale + m[j];
      prow[j] = v;
      mx = v > mx ? v : mx;
    }
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < lk; ++j) {
      const float e = fast_exp(prow[j] - mx);
      prow[j] = e;
      s += e;
    }
    const float inv = 1.f / s;
#pragma omp simd
    for (int64_t j = 0; j < lk; ++j) {
      const int64_t i = base + j;
      const float v = prow[j] * inv;
      prow[j] = v;
      const uint8_t k = drop ? static_cast<uint8_t>(keep_bits(key, static_cast<uint32_t>(i)) >= threshold) : 1;
      kp[i] = k;
      op[i] = k ? v * dscale : 0.f;
    }
  }
  return {out, probs, keep};
}

std::vector<paddle::Tensor> SoftmaxDropoutBackward(const paddle::Tensor& probs, const paddle::Tensor& keep,
                                                   const paddle::Tensor& grad_out, float scale, float p) {
  const auto& shape = probs.shape();
  const int64_t lk = shape[3], rows = probs.numel() / lk;
  auto gx = paddle::empty(shape, probs.dtype(), probs.place());
  const float* pp = probs.data<float>();
  const uint8_t* kp = keep.data<uint8_t>();
  const float* dy = grad_out.data<float>();
  float* gxp = gx.data<float>();
  const float dscale = p > 0.f ? 1.f / (1.f - p) : 1.f;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * lk;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < lk; ++j) {
      const int64_t i = base + j;
      const float dp = kp[i] ? dy[i] * dscale : 0.f;
      gxp[i] = dp;
      dot += dp * pp[i];
    }
#pragma omp simd
    for (int64_t j = 0; j < lk; ++j) {
      const int64_t i = base + j;
      gxp[i] = scale * pp[i] * (gxp[i] - dot);
    }
  }
  return {gx};
}

// ------------------------------------------------------------------ attention layouts
// The q/k/v projections as one GEMM give [B, L, 3H]; attention wants [B, heads, L, d] contiguous. Paddle's
// reshape + transpose leave strided views that later ops copy on one thread; these copy once, in parallel,
// adding the projection bias on the way (and its gradient on the way back).

namespace {

// The one layout change of attention: rows [B, L, width] whose columns [col, col + heads * d) hold the heads
// side by side, against heads [B, heads, L, d]. ToHeads copies rows -> heads (adding bias[heads * d] when
// given), else heads -> rows. split_qkv, merge_heads and both their backwards are this copy.
template <bool ToHeads>
void copy_heads(const float* src, float* dst, const float* bias, int64_t b, int64_t l, int64_t heads, int64_t d,
                int64_t width, int64_t col) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t li = 0; li < l; ++li) {
      for (int64_t hd = 0; hd < heads; ++hd) {
        const int64_t row = (bi * l + li) * width + col + hd * d, head = ((bi * heads + hd) * l + li) * d;
        const float* __restrict from = src + (ToHeads ? row : head);
        float* __restrict to = dst + (ToHeads ? head : row);
        if (bias) {
          const float* __restrict bs = bias + hd * d;
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) to[j] = from[j] + bs[j];
        } else {
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) to[j] = from[j];
        }
      }
    }
  }
}

}  // namespace

std::vector<paddle::Tensor> SplitQkvForward(const paddle::Tensor& x, const paddle::Tensor& bias, int heads) {
  dpr::check_float(x, "x");
  dpr::check_float(bias, "bias");
  const auto& s = x.shape();  // [B, L, 3H]
  PD_CHECK(s.size() == 3 && s[2] % (3 * heads) == 0 && bias.numel() == s[2], "x must be [B, L, 3H], bias [3H]");
  const int64_t d = s[2] / 3 / heads;
  std::vector<int64_t> shape = {s[0], heads, s[1], d};
  auto q = paddle::empty(shape, x.dtype(), x.place());
  auto k = paddle::empty(shape, x.dtype(), x.place());
  auto v = paddle::empty(shape, x.dtype(), x.place());
  float* outs[3] = {q.data<float>(), k.data<float>(), v.data<float>()};
  const int64_t h = heads * d;
  for (int part = 0; part < 3; ++part)
    copy_heads<true>(x.data<float>(), outs[part], bias.data<float>() + part * h, s[0], s[1], heads, d, 3 * h, part * h);
  return {q, k, v};
}

std::vector<paddle::Tensor> SplitQkvBackward(const paddle::Tensor& x, const paddle::Tensor& gq, const paddle::Tensor& gk,
                                             const paddle::Tensor& gv, int heads) {
  const auto& s = x.shape();
  const int64_t b = s[0], l = s[1], h3 = s[2], d = h3 / 3 / heads, h = h3 / 3;
  auto gx = paddle::empty(s, x.dtype(), x.place());
  auto gb = paddle::empty({h3}, x.dtype(), x.place());
  const paddle::Tensor* parts[3] = {&gq, &gk, &gv};
  for (int part = 0; part < 3; ++part)
    copy_heads<false>(parts[part]->data<float>(), gx.data<float>(), nullptr, b, l, heads, d, h3, part * h);
  rows_with_column_sums(b * l, h3, gb.data<float>(), [&](int64_t r, float* __restrict acc) {
    const float* __restrict g = gx.data<float>() + r * h3;
#pragma omp simd
    for (int64_t j = 0; j < h3; ++j) acc[j] += g[j];
  });
  return {gx, gb};
}

std::vector<paddle::Tensor> MergeHeadsForward(const paddle::Tensor& x) {
  dpr::check_float(x, "x");
  const auto& s = x.shape();  // [B, heads, L, d]
  PD_CHECK(s.size() == 4, "x must be [B, heads, L, d]");
  auto out = paddle::empty({s[0], s[2], s[1] * s[3]}, x.dtype(), x.place());
  copy_heads<false>(x.data<float>(), out.data<float>(), nullptr, s[0], s[2], s[1], s[3], s[1] * s[3], 0);
  return {out};
}

std::vector<paddle::Tensor> MergeHeadsBackward(const paddle::Tensor& x, const paddle::Tensor& grad_out) {
  const auto& s = x.shape();
  auto gx = paddle::empty(s, x.dtype(), x.place());
  copy_heads<true>(grad_out.data<float>(), gx.data<float>(), nullptr, s[0], s[2], s[1], s[3], s[1] * s[3], 0);
  return {gx};
}

PD_BUILD_OP(dpr_split_qkv)
    .Inputs({"X", "Bias"})
    .Outputs({"Q", "K", "V"})
    .Attrs({"heads: int"})
    .SetKernelFn(PD_KERNEL(SplitQkvForward));

PD_BUILD_GRAD_OP(dpr_split_qkv)
    .Inputs({"X", paddle::Grad("Q"), paddle::Grad("K"), paddle::Grad("V")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Bias")})
    .Attrs({"heads: int"})
    .SetKernelFn(PD_KERNEL(SplitQkvBackward));

PD_BUILD_OP(dpr_merge_heads)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(MergeHeadsForward));

PD_BUILD_GRAD_OP(dpr_merge_heads)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(MergeHeadsBackward));

PD_BUILD_OP(dpr_bias_gelu)
    .Inputs({"X", "Bias"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(BiasGeluForward));

PD_BUILD_GRAD_OP(dpr_bias_gelu)
    .Inputs({"X", "Bias", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Bias")})
    .SetKernelFn(PD_KERNEL(BiasGeluBackward));

PD_BUILD_OP(dpr_bias_dropout_residual_ln)
    .Inputs({"X", "Bias", "Residual", "Gamma", "Beta"})
    .Outputs({"Out", "Sum", "Mean", "Rstd", "Keep"})
    .Attrs({"seed: int64_t", "p: float", "eps: float"})
    .SetKernelFn(PD_KERNEL(BiasDropoutResidualLnForward));

PD_BUILD_GRAD_OP(dpr_bias_dropout_residual_ln)
    .Inputs({"Gamma", "Sum", "Mean", "Rstd", "Keep", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Bias"), paddle::Grad("Residual"), paddle::Grad("Gamma"),
              paddle::Grad("Beta")})
    .Attrs({"p: float"})
    .SetKernelFn(PD_KERNEL(BiasDropoutResidualLnBackward));

PD_BUILD_OP(dpr_softmax_dropout)
    .Inputs({"Scores", "Mask"})
    .Outputs({"Out", "Probs", "Keep"})
    .Attrs({"scale: float", "seed: int64_t", "p: float"})
    .SetKernelFn(PD_KERNEL(SoftmaxDropoutForward));

PD_BUILD_GRAD_OP(dpr_softmax_dropout)
    .Inputs({"Probs", "Keep", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Scores")})
    .Attrs({"scale: float", "p: float"})
    .SetKernelFn(PD_KERNEL(SoftmaxDropoutBackward));

PD_BUILD_OP(dpr_heads_matmul)
    .Inputs({"A", "B"})
    .Outputs({"Out"})
    .Attrs({"transpose_b: bool", "bf16: bool"})
    .SetKernelFn(PD_KERNEL(HeadsMatmulForward));

PD_BUILD_GRAD_OP(dpr_heads_matmul)
    .Inputs({"A", "B", paddle::Grad("Out")})
    .Outputs({paddle::Grad("A"), paddle::Grad("B")})
    .Attrs({"transpose_b: bool", "bf16: bool"})
    .SetKernelFn(PD_KERNEL(HeadsMatmulBackward));
