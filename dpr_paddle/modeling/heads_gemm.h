// Attention's per-head a @ b (or a @ bᵀ) as Paddle operators, forward and backward, over a batched GEMM: one copy
// for both kernel files, whose GEMMs are the two candidates fused_cpu.heads_gemm measures (fused_ops.cc's own
// heads_matmul, bf16_ops.cc's oneDNN batched matmul); with it, the input check both files' operators make.
#pragma once

#include "paddle/extension.h"

#include <cstdint>
#include <vector>

namespace dpr {

// Every operator here reads its inputs as float32 on the CPU.
inline void check_float(const paddle::Tensor& t, const char* name) {
  PD_CHECK(t.is_cpu(), name, " must be on the CPU");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, name, " must be float32");
}

// gemm(a, b, c, batch, m, k, n, ta, tb): c [batch, m, n] = a @ b, row-major, `ta` / `tb` reading A as [k, m] / B as
// [n, k]. a [..., m, k]; b [..., k, n], or [..., n, k] with transpose_b -> [..., m, n]; the leading dims are equal.
template <class Gemm>
std::vector<paddle::Tensor> heads_forward(const paddle::Tensor& a, const paddle::Tensor& b, bool transpose_b,
                                          Gemm gemm) {
  check_float(a, "a");
  check_float(b, "b");
  const auto& as = a.shape();
  const auto& bs = b.shape();
  PD_CHECK(as.size() >= 2 && as.size() == bs.size(), "a and b must have the same rank, at least 2");
  const int64_t m = as[as.size() - 2], k = as.back(), n = transpose_b ? bs[bs.size() - 2] : bs.back();
  const int64_t batch = a.numel() / (m * k);
  PD_CHECK((transpose_b ? bs.back() : bs[bs.size() - 2]) == k && b.numel() == batch * k * n, "a and b do not chain");
  auto shape = as;
  shape.back() = n;
  auto out = paddle::empty(shape, paddle::DataType::FLOAT32, a.place());
  gemm(a.data<float>(), b.data<float>(), out.data<float>(), batch, m, k, n, false, transpose_b);
  return {out};
}

template <class Gemm>
std::vector<paddle::Tensor> heads_backward(const paddle::Tensor& a, const paddle::Tensor& b,
                                           const paddle::Tensor& grad_out, bool transpose_b, Gemm gemm) {
  const auto& as = a.shape();
  const auto& bs = b.shape();
  const int64_t m = as[as.size() - 2], k = as.back(), n = transpose_b ? bs[bs.size() - 2] : bs.back();
  const int64_t batch = a.numel() / (m * k);
  auto ga = paddle::empty(as, paddle::DataType::FLOAT32, a.place());
  auto gb = paddle::empty(bs, paddle::DataType::FLOAT32, a.place());
  const float* g = grad_out.data<float>();
  // ga [m, k] = g @ bᵀ: bᵀ is b read transposed when b is [k, n], and b as it is when b is [n, k]
  gemm(g, b.data<float>(), ga.data<float>(), batch, m, n, k, false, !transpose_b);
  if (transpose_b) {  // gb [n, k] = gᵀ @ a
    gemm(g, a.data<float>(), gb.data<float>(), batch, n, m, k, true, false);
  } else {  // gb [k, n] = aᵀ @ g
    gemm(a.data<float>(), g, gb.data<float>(), batch, k, m, n, true, false);
  }
  return {ga, gb};
}

}  // namespace dpr
