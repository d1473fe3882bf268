// Counter-based normal noise shared by the C++ kernels; the Triton kernel
// (autoenc_fast/triton/reparametrize_kl.py) implements the same function.
//
// Scheme ("randn4x"): one Philox-4x32-10 call per group of four elements.
//   key     = (k0, k1) = (low, high) 32 bits of the 64-bit seed
//   counter = (c0, c1, 0, 0) = (low, high) 32 bits of the 64-bit group counter
//   (x0, x1, x2, x3) = Philox4x32_10(counter, key)
//   u_i = U(x_i), U(x) = float(i < 0 ? ~i : i) * 4.6566127342e-10f, i = int32(x)
//   (n0, n1) = BoxMuller(u0, u1), (n2, n3) = BoxMuller(u2, u3)
//   BoxMuller(a, b) = (r cos t, r sin t), r = sqrt(-2 log max(a, 1e-7)), t = 2*pi*b
// which is exactly triton.language.randn4x, all in float32.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define AEF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define AEF_HOST_DEVICE inline
#endif

namespace autoenc_fast {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;
// Triton's constants, so both kernels round the same way.
constexpr float kUintToUniform = 4.6566127342e-10f;
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kMinUniform = 1.0e-7f;

AEF_HOST_DEVICE uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Philox-4x32 with 10 rounds (Salmon et al. 2011), in place on c[0..3].
AEF_HOST_DEVICE void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3,
                                   uint32_t k0, uint32_t k1) {
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint32_t old_c0 = c0, old_c2 = c2;
    c0 = mulhi32(kPhiloxRoundB, old_c2) ^ c1 ^ k0;
    c2 = mulhi32(kPhiloxRoundA, old_c0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * old_c2;
    c3 = kPhiloxRoundA * old_c0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
}

// uint32 -> float in [0, 1], symmetric in the sign bit (Triton's uint_to_uniform_float).
AEF_HOST_DEVICE float uint_to_uniform(uint32_t x) {
  int32_t i = static_cast<int32_t>(x);
  i = i < 0 ? ~i : i;
  return static_cast<float>(i) * kUintToUniform;
}

}  // namespace autoenc_fast
