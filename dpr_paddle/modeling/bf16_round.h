// Rounding float32 to bfloat16, one copy for both kernel files: fused_ops.cc rounds the per-head GEMMs' inputs
// while packing them, bf16_ops.cc rounds the weight GEMMs' inputs for oneDNN. Both must round alike, or a
// --bf16 step would mix two roundings of the same activations.
#pragma once

#include <cstdint>
#include <cstring>

namespace dpr {

// The bfloat16 bits of f, rounded to nearest even as oneDNN's conversion does; a NaN stays a (quiet) NaN.
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
}

// f rounded to bfloat16 and widened back to float32 (exactly representable, so the float32 GEMM that follows
// computes what a bfloat16 GEMM with float32 accumulation would).
inline float bf16_round(float f) {
  const uint32_t r = static_cast<uint32_t>(bf16_bits(f)) << 16;
  float out;
  std::memcpy(&out, &r, sizeof out);
  return out;
}

}  // namespace dpr
