// bfloat16 GEMMs for CPU training (bf16_cpu.py): Paddle custom operators over oneDNN's matmul, the
// library Paddle's CPU wheel ships (paddle/libs/libdnnl.so.3) and that torch's CPU bf16 autocast uses.
//
// Each GEMM takes and returns float32 tensors; oneDNN's fpmath mode "bf16" lets the matmul round its
// inputs to bfloat16 (round to nearest even, inside its packing copy) and accumulate in float32, on AMX
// tiles. That is what an autocast matmul computes, less autocast's rounding of the output to bfloat16.
// oneDNN 3.6 honours that mode only where it has such a kernel: on AVX512-BF16 without AMX (AMD Zen 4) it
// picked its float32 kernel (brg_matmul:avx512_core) and computed in float32 at float32 speed. So each GEMM
// asks oneDNN which kernel it chose, and where that is not a bfloat16 one, rounds the inputs to bfloat16
// itself (round to nearest even, as oneDNN does) and hands oneDNN bfloat16 operands, whose kernel
// (brg_matmul:avx512_core_bf16, or gemm:jit:bf16 below) then runs. Where the kernel is not an AMX one, a weight
// GEMM's token count (rows of x, or the contraction of a weight gradient) is given at execution, so one primitive
// serves every chunk length. Attention's per-head GEMMs are here too, as one batched matmul (dpr_bf16_bmm): on AMX
// they ran 1.7-1.9x as fast as fused_ops.cc's heads_matmul, which wins elsewhere; fused_cpu.heads_gemm measures.
// Results are deterministic for a given shape and thread count, so a gradient cache's replay of a chunk gives the
// same bits as its first pass.
//
// Paddle's wheel ships the library but only a partial set of its headers, so the few C API entry points
// used here are declared below (oneDNN v3's stable C API; values from oneapi/dnnl/dnnl_types.h).
#include "paddle/extension.h"

#include "bf16_round.h"
#include "heads_gemm.h"

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

extern "C" {
typedef int64_t dnnl_dim_t;
typedef dnnl_dim_t dnnl_dims_t[12];
typedef struct dnnl_engine* dnnl_engine_t;
typedef struct dnnl_stream* dnnl_stream_t;
typedef struct dnnl_memory_desc* dnnl_memory_desc_t;
typedef const struct dnnl_memory_desc* const_dnnl_memory_desc_t;
typedef struct dnnl_memory* dnnl_memory_t;
typedef struct dnnl_primitive_desc* dnnl_primitive_desc_t;
typedef const struct dnnl_primitive_desc* const_dnnl_primitive_desc_t;
typedef struct dnnl_primitive* dnnl_primitive_t;
typedef const struct dnnl_primitive* const_dnnl_primitive_t;
typedef struct dnnl_primitive_attr* dnnl_primitive_attr_t;
typedef const struct dnnl_primitive_attr* const_dnnl_primitive_attr_t;
typedef struct {
  int arg;
  dnnl_memory_t memory;
} dnnl_exec_arg_t;
int dnnl_engine_create(dnnl_engine_t*, int kind, size_t index);
int dnnl_stream_create(dnnl_stream_t*, dnnl_engine_t, unsigned flags);
int dnnl_memory_desc_create_with_strides(dnnl_memory_desc_t*, int ndims, const dnnl_dims_t dims, int data_type,
                                         const dnnl_dims_t strides);
int dnnl_memory_desc_destroy(dnnl_memory_desc_t);
int dnnl_primitive_attr_create(dnnl_primitive_attr_t*);
int dnnl_primitive_attr_destroy(dnnl_primitive_attr_t);
int dnnl_primitive_attr_set_fpmath_mode(dnnl_primitive_attr_t, int mode);
int dnnl_matmul_primitive_desc_create(dnnl_primitive_desc_t*, dnnl_engine_t, const_dnnl_memory_desc_t src,
                                      const_dnnl_memory_desc_t weights, const_dnnl_memory_desc_t bias,
                                      const_dnnl_memory_desc_t dst, const_dnnl_primitive_attr_t);
int dnnl_primitive_desc_destroy(dnnl_primitive_desc_t);
int dnnl_primitive_desc_query(const_dnnl_primitive_desc_t, int what, int index, void* result);
int dnnl_primitive_create(dnnl_primitive_t*, const_dnnl_primitive_desc_t);
int dnnl_primitive_destroy(dnnl_primitive_t);
int dnnl_memory_create(dnnl_memory_t*, const_dnnl_memory_desc_t, dnnl_engine_t, void* handle);
int dnnl_memory_destroy(dnnl_memory_t);
int dnnl_primitive_execute(const_dnnl_primitive_t, dnnl_stream_t, int nargs, const dnnl_exec_arg_t* args);
int dnnl_stream_wait(dnnl_stream_t);
}

namespace {

constexpr int kCpuEngine = 1, kInOrder = 1, kBf16 = 2, kF32 = 3, kFpmathBf16 = 1, kQueryImplInfoStr = 8;
constexpr int kArgSrc = 1, kArgDst = 17, kArgWeights = 33;
constexpr int64_t kRuntime = INT64_MIN;  // DNNL_RUNTIME_DIM_VAL: a dimension given at execution
constexpr size_t kMaxCached = 512;       // distinct shapes kept (chunks of sorted lengths make a few hundred)

#define DNNL_OK(call) PD_CHECK((call) == 0, "oneDNN call failed: " #call)

struct Gemm {
  dnnl_primitive_t prim;
  bool round_inputs;  // A and B are rounded to bfloat16 here (oneDNN's fpmath mode ran float32 on this CPU)
};

dnnl_engine_t engine() {
  static dnnl_engine_t e = [] {
    dnnl_engine_t made;
    DNNL_OK(dnnl_engine_create(&made, kCpuEngine, 0));
    return made;
  }();
  return e;
}

dnnl_stream_t stream() {
  static dnnl_stream_t s = [] {
    dnnl_stream_t made;
    DNNL_OK(dnnl_stream_create(&made, engine(), kInOrder));
    return made;
  }();
  return s;
}

dnnl_memory_desc_t desc(int64_t batch, int64_t rows, int64_t cols, bool transposed, int type) {
  // a [batch, rows, cols] view of a row-major [batch, rows, cols] or (transposed) [batch, cols, rows] buffer; rows
  // or cols may be kRuntime (then batch is 1)
  const bool runtime = rows == kRuntime || cols == kRuntime;
  dnnl_dims_t dims = {batch, rows, cols};
  dnnl_dims_t strides = {runtime ? kRuntime : rows * cols, transposed ? 1 : cols, transposed ? rows : 1};
  dnnl_memory_desc_t made;
  DNNL_OK(dnnl_memory_desc_create_with_strides(&made, 3, dims, type, strides));
  return made;
}

const char* impl_name(const_dnnl_primitive_desc_t pd) {
  const char* impl = nullptr;
  DNNL_OK(dnnl_primitive_desc_query(pd, kQueryImplInfoStr, 0, &impl));
  return impl != nullptr ? impl : "";
}

bool runs_bf16(const_dnnl_primitive_desc_t pd) {
  // the kernel oneDNN chose computes in bfloat16 (e.g. "brg_matmul:avx512_core_amx"), not float32
  const char* impl = impl_name(pd);
  return std::strstr(impl, "amx") != nullptr || std::strstr(impl, "bf16") != nullptr;
}

// A matmul [batch, m, k] @ [batch, k, n] (inputs of `input_type`, float32 output, bfloat16 fpmath), or null when
// oneDNN has none.
dnnl_primitive_desc_t matmul_pd(int64_t batch, int64_t m, int64_t k, int64_t n, bool ta, bool tb, int input_type) {
  dnnl_memory_desc_t a = desc(batch, m, k, ta, input_type), b = desc(batch, k, n, tb, input_type),
                     c = desc(batch, m, n, false, kF32);
  dnnl_primitive_attr_t attr;
  DNNL_OK(dnnl_primitive_attr_create(&attr));
  DNNL_OK(dnnl_primitive_attr_set_fpmath_mode(attr, kFpmathBf16));
  dnnl_primitive_desc_t pd = nullptr;
  if (dnnl_matmul_primitive_desc_create(&pd, engine(), a, b, nullptr, c, attr) != 0) pd = nullptr;
  dnnl_primitive_attr_destroy(attr);
  dnnl_memory_desc_destroy(a);
  dnnl_memory_desc_destroy(b);
  dnnl_memory_desc_destroy(c);
  return pd;
}

bool token_count_at_run_time() {
  // AMX kernels (brg_matmul:avx512_core_amx) are built for fixed shapes, so on AMX one primitive is made per
  // shape, i.e. per chunk length. Elsewhere oneDNN's gemm:jit:bf16 takes the token count at execution, measured
  // as fast as the fixed-shape brg_matmul:avx512_core_bf16 on an AMD EPYC (Zen 4) host (MiniLM's GEMMs, 370-430
  // GFLOP/s), with one primitive per weight instead of hundreds whose JIT code and scratchpads grew the
  // process by hundreds of MB on real batches (docs/benchmarks.md section 14).
  static const bool yes = [] {
    dnnl_primitive_desc_t pd = matmul_pd(1, 256, 384, 384, false, false, kF32);
    const bool amx = pd != nullptr && std::strstr(impl_name(pd), "amx") != nullptr;
    if (pd != nullptr) dnnl_primitive_desc_destroy(pd);
    return !amx;
  }();
  return yes;
}

// [batch, m, k] @ [batch, k, n] -> [batch, m, n], row-major; `ta` / `tb` read A as [k, m] / B as [n, k]; `tokens`
// is 'm' or 'k', the dimension that is a chunk's token count in a weight GEMM (batch 1), or ' ' (fixed shapes)
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, bool, bool>;
std::mutex cache_mutex;
std::map<Key, Gemm> cache;

const Gemm& gemm(int64_t batch, int64_t m, int64_t k, int64_t n, bool ta, bool tb, char tokens) {
  if (tokens != ' ' && token_count_at_run_time()) (tokens == 'm' ? m : k) = kRuntime;
  std::lock_guard<std::mutex> lock(cache_mutex);
  Key key{batch, m, k, n, ta, tb};
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  if (cache.size() >= kMaxCached) {
    for (auto& kv : cache) dnnl_primitive_destroy(kv.second.prim);
    cache.clear();
  }
  Gemm g{nullptr, false};
  dnnl_primitive_desc_t pd = matmul_pd(batch, m, k, n, ta, tb, kF32);
  PD_CHECK(pd != nullptr, "oneDNN has no float32 matmul for this shape");
  if (!runs_bf16(pd)) {  // float32 here in spite of the fpmath mode: give oneDNN bfloat16 operands
    dnnl_primitive_desc_t bf16 = matmul_pd(batch, m, k, n, ta, tb, kBf16);
    if (bf16 != nullptr && runs_bf16(bf16)) {
      dnnl_primitive_desc_destroy(pd);
      pd = bf16;
      g.round_inputs = true;
    } else if (bf16 != nullptr) {  // no bfloat16 kernel on this CPU (AVX2): float32, as bf16_cpu.py says
      dnnl_primitive_desc_destroy(bf16);
    }
  }
  DNNL_OK(dnnl_primitive_create(&g.prim, pd));
  dnnl_primitive_desc_destroy(pd);
  return cache.emplace(key, g).first->second;
}

void round_to_bf16(const float* x, uint16_t* y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 16384)
  for (int64_t i = 0; i < n; ++i) y[i] = dpr::bf16_bits(x[i]);
}

// c [batch, m, n] = a @ b with the shapes of gemm(batch, m, k, n, ta, tb, ...), which made `g`
void run(const Gemm& g, const float* a, const float* b, float* c, int64_t batch, int64_t m, int64_t k, int64_t n,
         bool ta, bool tb) {
  void* pa = const_cast<float*>(a);
  void* pb = const_cast<float*>(b);
  thread_local std::vector<uint16_t> a16, b16;  // the rounded inputs, reused across calls
  if (g.round_inputs) {
    a16.resize(batch * m * k);
    b16.resize(batch * k * n);
    round_to_bf16(a, a16.data(), batch * m * k);
    round_to_bf16(b, b16.data(), batch * k * n);
    pa = a16.data();
    pb = b16.data();
  }
  const int type = g.round_inputs ? kBf16 : kF32;
  dnnl_memory_desc_t da = desc(batch, m, k, ta, type), db = desc(batch, k, n, tb, type),
                     dc = desc(batch, m, n, false, kF32);
  dnnl_memory_t ma, mb, mc;
  DNNL_OK(dnnl_memory_create(&ma, da, engine(), pa));
  DNNL_OK(dnnl_memory_create(&mb, db, engine(), pb));
  DNNL_OK(dnnl_memory_create(&mc, dc, engine(), c));
  dnnl_exec_arg_t args[3] = {{kArgSrc, ma}, {kArgWeights, mb}, {kArgDst, mc}};
  DNNL_OK(dnnl_primitive_execute(g.prim, stream(), 3, args));
  DNNL_OK(dnnl_stream_wait(stream()));
  dnnl_memory_destroy(ma);
  dnnl_memory_destroy(mb);
  dnnl_memory_destroy(mc);
  dnnl_memory_desc_destroy(da);
  dnnl_memory_desc_destroy(db);
  dnnl_memory_desc_destroy(dc);
}

// c [batch, m, n] = a @ b; a weight GEMM's token dimension (`tokens`: 'm' or 'k') given at run time where this CPU
// allows it
void matmul(const float* a, const float* b, float* c, int64_t batch, int64_t m, int64_t k, int64_t n, bool ta, bool tb,
            char tokens) {
  run(gemm(batch, m, k, n, ta, tb, tokens), a, b, c, batch, m, k, n, ta, tb);
}

}  // namespace

// ---------------------------------------------------------------------------------------- x @ w (weights)
// x [..., k], w [k, n] -> [..., n]

std::vector<paddle::Tensor> LinearForward(const paddle::Tensor& x, const paddle::Tensor& w) {
  dpr::check_float(x, "x");
  dpr::check_float(w, "w");
  const int64_t k = x.shape().back(), n = w.shape()[1], m = x.numel() / k;
  PD_CHECK(w.shape()[0] == k, "x and w do not chain");
  auto shape = x.shape();
  shape.back() = n;
  auto out = paddle::empty(shape, paddle::DataType::FLOAT32, x.place());
  matmul(x.data<float>(), w.data<float>(), out.data<float>(), 1, m, k, n, false, false, 'm');
  return {out};
}

std::vector<paddle::Tensor> LinearBackward(const paddle::Tensor& x, const paddle::Tensor& w,
                                           const paddle::Tensor& grad_out) {
  const int64_t k = x.shape().back(), n = w.shape()[1], m = x.numel() / k;
  auto gx = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  auto gw = paddle::empty(w.shape(), paddle::DataType::FLOAT32, x.place());
  matmul(grad_out.data<float>(), w.data<float>(), gx.data<float>(), 1, m, n, k, false, true, 'm');  // g @ w^T
  matmul(x.data<float>(), grad_out.data<float>(), gw.data<float>(), 1, k, m, n, true, false, 'k');  // x^T @ g
  return {gx, gw};
}

PD_BUILD_OP(dpr_bf16_linear).Inputs({"X", "W"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(LinearForward));

PD_BUILD_GRAD_OP(dpr_bf16_linear)
    .Inputs({"X", "W", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W")})
    .SetKernelFn(PD_KERNEL(LinearBackward));

// ------------------------------------------------------------------ a @ b (per head; b transposed or not)
// a [..., m, k]; b [..., k, n], or [..., n, k] with transpose_b -> [..., m, n]; the leading dims are equal.
// Fixed shapes (one primitive per chunk length): AMX kernels are built per shape.

std::vector<paddle::Tensor> BatchedForward(const paddle::Tensor& a, const paddle::Tensor& b, bool transpose_b) {
  return dpr::heads_forward(a, b, transpose_b, [](const float* x, const float* y, float* z, int64_t batch, int64_t m,
                                                  int64_t k, int64_t n, bool ta, bool tb) {
    matmul(x, y, z, batch, m, k, n, ta, tb, ' ');
  });
}

std::vector<paddle::Tensor> BatchedBackward(const paddle::Tensor& a, const paddle::Tensor& b,
                                            const paddle::Tensor& grad_out, bool transpose_b) {
  return dpr::heads_backward(a, b, grad_out, transpose_b, [](const float* x, const float* y, float* z,
                                                             int64_t batch, int64_t m, int64_t k, int64_t n, bool ta,
                                                             bool tb) {
    matmul(x, y, z, batch, m, k, n, ta, tb, ' ');
  });
}

PD_BUILD_OP(dpr_bf16_bmm)
    .Inputs({"A", "B"})
    .Outputs({"Out"})
    .Attrs({"transpose_b: bool"})
    .SetKernelFn(PD_KERNEL(BatchedForward));

PD_BUILD_GRAD_OP(dpr_bf16_bmm)
    .Inputs({"A", "B", paddle::Grad("Out")})
    .Outputs({paddle::Grad("A"), paddle::Grad("B")})
    .Attrs({"transpose_b: bool"})
    .SetKernelFn(PD_KERNEL(BatchedBackward));
