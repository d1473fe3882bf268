// CPU kernels of autoenc_fast::reparametrize_kl and its backward.
//
//   s = exp(logvar / 2)
//   z = mu + s * eps                  (eps drawn here by Philox when not given)
//   kl[b] = -1/2 * sum_d (1 + logvar - mu^2 - s^2)
// backward (eps is never stored: s * eps = z - mu):
//   dmu     = dz + dkl[b] * mu
//   dlogvar = 1/2 * dz * (z - mu) + 1/2 * dkl[b] * (s^2 - 1)
//
// Inputs are made contiguous once on entry (one copy for a strided view, none
// otherwise); outputs are contiguous. Work is split into (row, slice) tasks of at
// most kSliceElems elements, so the KL summation order does not depend on the
// number of threads. float32 accumulates in float32, float64 in float64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "../philox.h"
#include "../reparametrize_kl_checks.h"

namespace autoenc_fast {
namespace {

// Elements handled per inner step; the noise for them is drawn into a stack buffer.
constexpr int64_t kChunkElems = 1024;
// Elements per KL partial sum (a multiple of kChunkElems and of 4).
constexpr int64_t kSliceElems = 64 * kChunkElems;
// Aim for at least this many elements per parallel task batch.
constexpr int64_t kGrainElems = 16384;

#if defined(CPU_CAPABILITY_AVX2)
// Helpers inlined into both the AVX2 and the AVX-512 noise functions, so each is
// compiled with the registers and instructions of the function it ends up in.
#define AEF_INLINE inline __attribute__((always_inline))

AEF_INLINE __m256 uniform8(__m256i x) {
  // (i < 0 ? ~i : i) == i ^ (i >> 31), then scale, as uint_to_uniform().
  const __m256i folded = _mm256_xor_si256(x, _mm256_srai_epi32(x, 31));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(kUintToUniform));
}

// log(u) for positive normal floats (u >= kMinUniform here): u = 2^e * m with m in
// [sqrt(1/2), sqrt(2)), log(m) = x - x^2/2 + x^3 P(x) at x = m - 1 (Cephes' logf
// polynomial), e * ln 2 added in two parts. Within 1 ulp; inline, where a SLEEF call
// (u3.5) cost 1.6x as much in this loop.
AEF_INLINE __m256 log8(__m256 u) {
  const __m256i bits = _mm256_castps_si256(u);
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
  __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f800000)));
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // lanes of `big` are -1: e + 1
  const __m256 ef = _mm256_cvtepi32_ps(e);
  const __m256 x = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
  const __m256 x2 = _mm256_mul_ps(x, x);
  constexpr float kP[9] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,
                           -1.2420140846e-1f, 1.4249322787e-1f,  -1.6668057665e-1f,
                           2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};
  __m256 p = _mm256_set1_ps(kP[0]);
  for (int i = 1; i < 9; ++i) p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(kP[i]));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, x), x2);
  y = _mm256_fmadd_ps(ef, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(x2, _mm256_set1_ps(0.5f), y);
  return _mm256_fmadd_ps(ef, _mm256_set1_ps(0.693359375f), _mm256_add_ps(x, y));
}

// exp(x) = 2^n * exp(r) with n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2]
// (ln 2 in two parts), exp(r) = 1 + r + r^2 P(r) (Cephes' expf polynomial), 2^n applied
// as two exact powers of two so that n from -150 to 128 gives denormals, zero and inf as
// expf does; x is clamped to [-104, 89] first, a NaN stays NaN. Within 1 ulp; inline,
// where at::vec's SLEEF call cost about as much as drawing the noise.
AEF_INLINE __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(89.0f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i half_n = _mm256_srai_epi32(ni, 1);
  const auto pow2 = [](__m256i e) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23));
  };
  return _mm256_mul_ps(_mm256_mul_ps(p, pow2(half_n)), pow2(_mm256_sub_epi32(ni, half_n)));
}

// (sin t, cos t) for t in [0, 2 pi]: q = round(t * 2 / pi), r = t - q * pi / 2 in
// [-pi/4, pi/4] (pi/2 in two parts with FMA, exact enough for q <= 4), Cephes' sinf and
// cosf polynomials of r, then quadrant q's swap and signs:
//   sin(q pi/2 + r) = (sin r, cos r, -sin r, -cos r)[q % 4], cos likewise shifted by one.
// Within 2 ulp; a general sincos must also reduce huge arguments, which t never is.
AEF_INLINE void sincos8(__m256 t, __m256& sin_out, __m256& cos_out) {
  const __m256 q = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(0.636619772f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(q, _mm256_set1_ps(1.57079637f), t);
  r = _mm256_fnmadd_ps(q, _mm256_set1_ps(-4.37113883e-8f), r);
  const __m256 r2 = _mm256_mul_ps(r, r);
  __m256 s = _mm256_fmadd_ps(_mm256_set1_ps(-1.9515295891e-4f), r2, _mm256_set1_ps(8.3321608736e-3f));
  s = _mm256_fmadd_ps(s, r2, _mm256_set1_ps(-1.6666654611e-1f));
  s = _mm256_fmadd_ps(_mm256_mul_ps(s, r2), r, r);
  __m256 c = _mm256_fmadd_ps(_mm256_set1_ps(2.443315711809948e-5f), r2, _mm256_set1_ps(-1.388731625493765e-3f));
  c = _mm256_fmadd_ps(c, r2, _mm256_set1_ps(4.166664568298827e-2f));
  c = _mm256_fmadd_ps(_mm256_mul_ps(c, r2), r2, _mm256_fnmadd_ps(r2, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
  const __m256i qi = _mm256_cvtps_epi32(q);
  const __m256 odd = _mm256_castsi256_ps(_mm256_srai_epi32(_mm256_slli_epi32(qi, 31), 31));
  const __m256 sin_sign = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(qi, 1), 31));
  const __m256 cos_sign =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(_mm256_add_epi32(qi, _mm256_set1_epi32(1)), 1), 31));
  sin_out = _mm256_xor_ps(_mm256_blendv_ps(s, c, odd), sin_sign);
  cos_out = _mm256_xor_ps(_mm256_blendv_ps(c, s, odd), cos_sign);
}

AEF_INLINE void box_muller8(__m256 radius_u, __m256 angle_u, __m256& cos_out, __m256& sin_out) {
  const __m256 log_u = log8(_mm256_max_ps(radius_u, _mm256_set1_ps(kMinUniform)));
  const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), log_u));
  __m256 sin_t, cos_t;
  sincos8(_mm256_mul_ps(_mm256_set1_ps(kTwoPi), angle_u), sin_t, cos_t);
  cos_out = _mm256_mul_ps(radius, cos_t);
  sin_out = _mm256_mul_ps(radius, sin_t);
}

// Philox state of 8 groups, one 32-bit word of each group per lane, groups in lane order.
struct Philox8 {
  __m256i c0, c1, c2, c3;
};

// AVX2 has no 32-bit high multiply: vpmuludq forms the full 64-bit products of the even
// lanes, and of the odd lanes shifted down, whose high words make mulhi; vpmulld gives
// the low words directly (one instruction where masking them out of the products
// took two).
AEF_INLINE void mul_hi_lo(__m256i a, __m256i b, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, b);
  const __m256i odd = _mm256_mul_epu32(a, _mm256_srli_epi64(b, 32));
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_mullo_epi32(a, b);
}

AEF_INLINE Philox8 philox8_counters(uint64_t counter) {
  alignas(32) uint32_t lo[8], hi[8];
  for (int lane = 0; lane < 8; ++lane) {
    const uint64_t c = counter + static_cast<uint64_t>(lane);
    lo[lane] = static_cast<uint32_t>(c);
    hi[lane] = static_cast<uint32_t>(c >> 32);
  }
  return {_mm256_load_si256(reinterpret_cast<const __m256i*>(lo)),
          _mm256_load_si256(reinterpret_cast<const __m256i*>(hi)), _mm256_setzero_si256(),
          _mm256_setzero_si256()};
}

AEF_INLINE void philox8_round(Philox8& s, __m256i key0, __m256i key1) {
  const __m256i round_a = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m256i round_b = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundB));
  __m256i hi_b, lo_b, hi_a, lo_a;
  mul_hi_lo(round_b, s.c2, hi_b, lo_b);
  mul_hi_lo(round_a, s.c0, hi_a, lo_a);
  s.c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, s.c1), key0);
  s.c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, s.c3), key1);
  s.c1 = lo_b;
  s.c3 = lo_a;
}

// The ten round keys of one seed, broadcast once per draw instead of once per round.
struct RoundKeys {
  __m256i k0[kPhiloxRounds], k1[kPhiloxRounds];
  RoundKeys(uint32_t key0, uint32_t key1) {
    for (int round = 0; round < kPhiloxRounds; ++round) {
      k0[round] = _mm256_set1_epi32(static_cast<int>(key0 + round * kPhiloxKeyA));
      k1[round] = _mm256_set1_epi32(static_cast<int>(key1 + round * kPhiloxKeyB));
    }
  }
};

// Box-Muller of 8 groups, stored so that group g's four normals are out[4g .. 4g + 4).
AEF_INLINE void normals8_store(const Philox8& s, float* out) {
  __m256 n0, n1, n2, n3;
  box_muller8(uniform8(s.c0), uniform8(s.c1), n0, n1);
  box_muller8(uniform8(s.c2), uniform8(s.c3), n2, n3);
  // 4x8 -> 8x4 transpose.
  const __m256 t0 = _mm256_unpacklo_ps(n0, n1), t1 = _mm256_unpackhi_ps(n0, n1);
  const __m256 t2 = _mm256_unpacklo_ps(n2, n3), t3 = _mm256_unpackhi_ps(n2, n3);
  const __m256 g04 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  const __m256 g15 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  const __m256 g26 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
  const __m256 g37 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
  _mm256_storeu_ps(out + 0, _mm256_permute2f128_ps(g04, g15, 0x20));
  _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(g26, g37, 0x20));
  _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(g04, g15, 0x31));
  _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(g26, g37, 0x31));
}

constexpr int64_t kGroupsPerCall = 16;

// Normals for Philox groups [counter, counter + 16) into out[0 .. 64).
// Two independent sets of 8 interleaved round by round, so the multiply latency of one
// set hides behind the other's work.
void normals_for_groups_avx2(const RoundKeys& keys, uint64_t counter, float* out) {
  Philox8 a = philox8_counters(counter), b = philox8_counters(counter + 8);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    philox8_round(a, keys.k0[round], keys.k1[round]);
    philox8_round(b, keys.k0[round], keys.k1[round]);
  }
  normals8_store(a, out);
  normals8_store(b, out + 32);
}

// The same with AVX-512 (F, VL, DQ), chosen at run time where the CPU has it. A zmm holds
// 8 groups, one per 64-bit lane: the word is the lane's low 32 bits and the high bits are
// left-over product bits nobody reads, since vpmuludq multiplies low halves only. The
// full 64-bit product is then mulhi (high half, one shift) and mullo (the product itself)
// with no blends, vpternlogq does a round's two xors in one, and the words are narrowed
// to 32-bit lanes once, after the tenth round. Measured: the rounds alone 1.5 ns per
// group against 2.9 for the AVX2 code; the whole single-threaded 512x2304 forward with
// drawn noise 6 % faster (2.45 against 2.60 ms, min of 7x50 calls).
#define AEF_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq")))

AEF_AVX512 AEF_INLINE void philox8x64_round(__m512i& c0, __m512i& c1, __m512i& c2, __m512i& c3, __m512i key0,
                                           __m512i key1) {
  const __m512i prod_b = _mm512_mul_epu32(_mm512_set1_epi32(static_cast<int>(kPhiloxRoundB)), c2);
  const __m512i prod_a = _mm512_mul_epu32(_mm512_set1_epi32(static_cast<int>(kPhiloxRoundA)), c0);
  c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(prod_b, 32), c1, key0, 0x96);  // a ^ b ^ c
  c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(prod_a, 32), c3, key1, 0x96);
  c1 = prod_b;
  c3 = prod_a;
}

AEF_AVX512 void normals_for_groups_avx512(const RoundKeys& keys, uint64_t counter, float* out) {
  const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i first = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(counter)), lanes);
  const __m512i second = _mm512_add_epi64(first, _mm512_set1_epi64(8));
  __m512i a0 = first, a1 = _mm512_srli_epi64(first, 32), a2 = _mm512_setzero_si512(), a3 = a2;
  __m512i b0 = second, b1 = _mm512_srli_epi64(second, 32), b2 = a2, b3 = a2;
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const __m512i key0 = _mm512_broadcast_i64x4(keys.k0[round]), key1 = _mm512_broadcast_i64x4(keys.k1[round]);
    philox8x64_round(a0, a1, a2, a3, key0, key1);
    philox8x64_round(b0, b1, b2, b3, key0, key1);
  }
  normals8_store({_mm512_cvtepi64_epi32(a0), _mm512_cvtepi64_epi32(a1), _mm512_cvtepi64_epi32(a2),
                  _mm512_cvtepi64_epi32(a3)}, out);
  normals8_store({_mm512_cvtepi64_epi32(b0), _mm512_cvtepi64_epi32(b1), _mm512_cvtepi64_epi32(b2),
                  _mm512_cvtepi64_epi32(b3)}, out + 32);
}

// AVX-512 when this CPU has it, unless AUTOENC_FAST_CPU_NO_AVX512 is set (tests use it to
// run the AVX2 path on an AVX-512 machine).
using NormalsFn = void (*)(const RoundKeys&, uint64_t, float*);
NormalsFn pick_normals_fn() {
  static const NormalsFn fn = [] {
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512dq") && std::getenv("AUTOENC_FAST_CPU_NO_AVX512") == nullptr;
    return avx512 ? &normals_for_groups_avx512 : &normals_for_groups_avx2;
  }();
  return fn;
}

void normals_for_groups(const RoundKeys& keys, uint64_t counter, float* out) { pick_normals_fn()(keys, counter, out); }
#else
using FloatVec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = FloatVec::size();
constexpr int64_t kGroupsPerCall = kLanes;

struct RoundKeys {
  uint32_t k0, k1;
};

// Portable version: the group loop is written lane-wise for the auto-vectoriser,
// Box-Muller runs on at::vec. Normals for groups [counter, counter + kLanes).
void normals_for_groups(const RoundKeys& keys, uint64_t counter, float* out) {
  const uint32_t k0 = keys.k0, k1 = keys.k1;
  alignas(64) float u[4][kLanes];
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    const uint64_t c = counter + static_cast<uint64_t>(lane);
    uint32_t x0 = static_cast<uint32_t>(c), x1 = static_cast<uint32_t>(c >> 32), x2 = 0, x3 = 0;
    philox4x32_10(x0, x1, x2, x3, k0, k1);
    u[0][lane] = uint_to_uniform(x0);
    u[1][lane] = uint_to_uniform(x1);
    u[2][lane] = uint_to_uniform(x2);
    u[3][lane] = uint_to_uniform(x3);
  }
  const FloatVec min_u(kMinUniform), minus_two(-2.0f), two_pi(kTwoPi);
  alignas(64) float n[4][kLanes];
  for (int pair = 0; pair < 2; ++pair) {
    const FloatVec u_radius = at::vec::maximum(FloatVec::loadu(u[2 * pair]), min_u);
    const FloatVec radius = (minus_two * u_radius.log()).sqrt();
    const FloatVec theta = two_pi * FloatVec::loadu(u[2 * pair + 1]);
    (radius * theta.cos()).store(n[2 * pair]);
    (radius * theta.sin()).store(n[2 * pair + 1]);
  }
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    for (int j = 0; j < 4; ++j) out[4 * lane + j] = n[j][lane];
  }
}
#endif

// Normals for elements [d0, d0 + count) of one row; d0 is a multiple of 4 and the
// row's first group counter is row_counter.
template <typename scalar_t>
void draw_row_noise(uint64_t key, uint64_t row_counter, int64_t d0, int64_t count, scalar_t* out) {
  const RoundKeys keys{static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)};
  alignas(64) float batch[4 * kGroupsPerCall];
  const uint64_t first_group = row_counter + static_cast<uint64_t>(d0 / 4);
  for (int64_t done = 0; done < count; done += 4 * kGroupsPerCall) {
    const uint64_t counter = first_group + static_cast<uint64_t>(done / 4);
    const int64_t n = std::min<int64_t>(4 * kGroupsPerCall, count - done);
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (n == 4 * kGroupsPerCall) {  // a whole batch: no staging copy
        normals_for_groups(keys, counter, out + done);
        continue;
      }
    }
    normals_for_groups(keys, counter, batch);
    for (int64_t i = 0; i < n; ++i) out[done + i] = static_cast<scalar_t>(batch[i]);
  }
}

// Splits rows of `row_len` elements into slices and runs fn(row, begin, end) in parallel.
template <typename Fn>
void for_each_row_slice(int64_t rows, int64_t row_len, const Fn& fn) {
  const int64_t slices = std::max<int64_t>(1, (row_len + kSliceElems - 1) / kSliceElems);
  const int64_t task_elems = std::max<int64_t>(1, std::min(row_len, kSliceElems));
  const int64_t grain = std::max<int64_t>(1, kGrainElems / task_elems);
  at::parallel_for(0, rows * slices, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / slices, slice = task % slices;
      const int64_t d_begin = slice * kSliceElems;
      const int64_t d_end = std::min(row_len, d_begin + kSliceElems);
      fn(task, row, d_begin, d_end);
    }
  });
}

// exp of a vector: the inline exp8 above for float with AVX2, at::vec's otherwise.
template <typename scalar_t>
inline at::vec::Vectorized<scalar_t> vec_exp(const at::vec::Vectorized<scalar_t>& x) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) return exp8(x);
#endif
  return x.exp();
}

template <typename scalar_t>
scalar_t forward_chunk(const scalar_t* mu, const scalar_t* logvar, const scalar_t* noise,
                       scalar_t* z, int64_t n) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const Vec half(0.5), one(1.0);
  Vec acc(0.0);
  for (int64_t i = 0; i < n; i += Vec::size()) {
    const int64_t m = std::min<int64_t>(Vec::size(), n - i);
    // Lanes past the end load as zero and add 1 + 0 - 0 - exp(0) = 0 to the KL.
    const Vec mu_v = Vec::loadu(mu + i, m), lv_v = Vec::loadu(logvar + i, m);
    const Vec std_v = vec_exp(lv_v * half);
    if (noise != nullptr) {
      at::vec::fmadd(std_v, Vec::loadu(noise + i, m), mu_v).store(z + i, m);
    } else {
      mu_v.store(z + i, m);
    }
    acc = acc + (one + lv_v) - mu_v * mu_v - std_v * std_v;
  }
  return at::vec::vec_reduce_all<scalar_t>([](Vec& a, Vec& b) { return a + b; }, acc);
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& eps,
                    bool draw_noise, uint64_t key, uint64_t offset, at::Tensor& z, at::Tensor& kl) {
  const int64_t rows = mu.size(0), row_len = rows == 0 ? 0 : mu.numel() / rows;
  const int64_t slices = std::max<int64_t>(1, (row_len + kSliceElems - 1) / kSliceElems);
  const uint64_t groups_per_row = static_cast<uint64_t>((row_len + 3) / 4);
  std::vector<scalar_t> partial(rows * slices, scalar_t(0));
  const scalar_t* mu_p = mu.const_data_ptr<scalar_t>();
  const scalar_t* lv_p = logvar.const_data_ptr<scalar_t>();
  const scalar_t* eps_p = eps.defined() ? eps.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* z_p = z.mutable_data_ptr<scalar_t>();

  for_each_row_slice(rows, row_len, [&](int64_t task, int64_t row, int64_t d_begin, int64_t d_end) {
    alignas(64) scalar_t noise[kChunkElems];
    const int64_t base = row * row_len;
    const uint64_t row_counter = offset + static_cast<uint64_t>(row) * groups_per_row;
    scalar_t acc = 0;
    for (int64_t d = d_begin; d < d_end; d += kChunkElems) {
      const int64_t n = std::min(kChunkElems, d_end - d);
      const scalar_t* noise_p = eps_p != nullptr ? eps_p + base + d : nullptr;
      if (draw_noise) {
        draw_row_noise(key, row_counter, d, n, noise);
        noise_p = noise;
      }
      acc += forward_chunk(mu_p + base + d, lv_p + base + d, noise_p, z_p + base + d, n);
    }
    partial[task] = acc;
  });

  scalar_t* kl_p = kl.mutable_data_ptr<scalar_t>();
  for (int64_t row = 0; row < rows; ++row) {
    scalar_t sum = 0;
    for (int64_t s = 0; s < slices; ++s) sum += partial[row * slices + s];
    kl_p[row] = scalar_t(-0.5) * sum;
  }
}

// sigma * eps = exp(logvar / 2) * noise when `noise` is set (eps given or re-drawn), else
// z - mu (z == mu when the forward drew no noise).
template <typename scalar_t, bool kHasGradZ, bool kHasGradKl>
void backward_chunk(const scalar_t* grad_z, scalar_t grad_kl, const scalar_t* mu, const scalar_t* logvar,
                    const scalar_t* z, const scalar_t* noise, scalar_t* grad_mu, scalar_t* grad_logvar,
                    int64_t n) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const Vec half(0.5), one(1.0), gkl(grad_kl), half_gkl(grad_kl * scalar_t(0.5));
  for (int64_t i = 0; i < n; i += Vec::size()) {
    const int64_t m = std::min<int64_t>(Vec::size(), n - i);
    const Vec mu_v = Vec::loadu(mu + i, m);
    Vec gmu(0.0), glv(0.0);
    if constexpr (kHasGradZ) {
      const Vec gz = Vec::loadu(grad_z + i, m);
      const Vec sigma_eps = noise != nullptr ? vec_exp(Vec::loadu(logvar + i, m) * half) * Vec::loadu(noise + i, m)
                                             : Vec::loadu(z + i, m) - mu_v;
      gmu = gz;
      glv = half * gz * sigma_eps;
    }
    if constexpr (kHasGradKl) {
      gmu = at::vec::fmadd(gkl, mu_v, gmu);
      glv = at::vec::fmadd(half_gkl, vec_exp(Vec::loadu(logvar + i, m)) - one, glv);
    }
    gmu.store(grad_mu + i, m);
    glv.store(grad_logvar + i, m);
  }
}

// Where the backward takes sigma * eps from (see backward_chunk): `eps` when defined, the
// forward's noise re-drawn from (key, offset) when `draw`, else `z`.
struct NoiseSource {
  at::Tensor eps, z;
  bool draw = false;
  uint64_t key = 0, offset = 0;
};

template <typename scalar_t, bool kHasGradZ, bool kHasGradKl>
void backward_kernel(const at::Tensor& grad_z, const at::Tensor& grad_kl, const at::Tensor& mu,
                     const at::Tensor& logvar, const NoiseSource& source, at::Tensor& grad_mu,
                     at::Tensor& grad_logvar) {
  const int64_t rows = mu.size(0), row_len = rows == 0 ? 0 : mu.numel() / rows;
  const uint64_t groups_per_row = static_cast<uint64_t>((row_len + 3) / 4);
  const scalar_t* gz_p = kHasGradZ ? grad_z.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* gkl_p = kHasGradKl ? grad_kl.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* mu_p = mu.const_data_ptr<scalar_t>();
  const scalar_t* lv_p = logvar.const_data_ptr<scalar_t>();
  const scalar_t* z_p = source.z.defined() ? source.z.const_data_ptr<scalar_t>() : mu_p;
  const scalar_t* eps_p = source.eps.defined() ? source.eps.const_data_ptr<scalar_t>() : nullptr;
  const bool draw = kHasGradZ && source.draw;  // only the dz term needs the noise
  scalar_t* gmu_p = grad_mu.mutable_data_ptr<scalar_t>();
  scalar_t* glv_p = grad_logvar.mutable_data_ptr<scalar_t>();
  for_each_row_slice(rows, row_len, [&](int64_t, int64_t row, int64_t d_begin, int64_t d_end) {
    alignas(64) scalar_t noise[kChunkElems];
    const uint64_t row_counter = source.offset + static_cast<uint64_t>(row) * groups_per_row;
    for (int64_t d = d_begin; d < d_end; d += kChunkElems) {
      const int64_t n = std::min(kChunkElems, d_end - d), at = row * row_len + d;
      const scalar_t* noise_p = eps_p != nullptr ? eps_p + at : nullptr;
      if (draw) {
        draw_row_noise(source.key, row_counter, d, n, noise);
        noise_p = noise;
      }
      backward_chunk<scalar_t, kHasGradZ, kHasGradKl>(
          kHasGradZ ? gz_p + at : nullptr, kHasGradKl ? gkl_p[row] : scalar_t(0), mu_p + at, lv_p + at, z_p + at,
          noise_p, gmu_p + at, glv_p + at, n);
    }
  });
}

// (key, offset) of a seed tensor, on the CPU like mu (check_reparametrize_kl_seed).
std::pair<uint64_t, uint64_t> read_seed(const at::Tensor& seed) {
  const at::Tensor seed_cpu = seed.contiguous();
  return {static_cast<uint64_t>(seed_cpu.const_data_ptr<int64_t>()[0]),
          static_cast<uint64_t>(seed_cpu.const_data_ptr<int64_t>()[1])};
}

std::tuple<at::Tensor, at::Tensor> reparametrize_kl_cpu(const at::Tensor& mu_in,
                                                         const at::Tensor& logvar_in,
                                                         const std::optional<at::Tensor>& eps_in,
                                                         const std::optional<at::Tensor>& seed) {
  check_reparametrize_kl_inputs(mu_in, logvar_in, eps_in, seed);
  TORCH_CHECK(mu_in.scalar_type() == at::kFloat || mu_in.scalar_type() == at::kDouble,
              "reparametrize_kl: the CPU kernel takes float32 or float64 `mu`; got ",
              mu_in.scalar_type());
  const at::Tensor mu = mu_in.contiguous(), logvar = logvar_in.contiguous();
  const at::Tensor eps = eps_in.has_value() ? eps_in->contiguous() : at::Tensor();
  at::Tensor z = at::empty(mu.sizes(), mu.options());
  at::Tensor kl = at::empty({mu.size(0)}, mu.options());
  if (mu.size(0) == 0) return {z, kl};

  uint64_t key = 0, offset = 0;
  const bool draw_noise = !eps.defined() && seed.has_value();
  if (draw_noise) std::tie(key, offset) = read_seed(*seed);
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "reparametrize_kl_cpu", [&] {
    forward_kernel<scalar_t>(mu, logvar, eps, draw_noise, key, offset, z, kl);
  });
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> reparametrize_kl_backward_cpu(
    const std::optional<at::Tensor>& grad_z_in, const std::optional<at::Tensor>& grad_kl_in,
    const at::Tensor& mu_in, const at::Tensor& logvar_in, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& seed) {
  check_reparametrize_kl_backward_inputs(grad_z_in, grad_kl_in, mu_in, logvar_in, z, eps, seed);
  const at::Tensor mu = mu_in.contiguous(), logvar = logvar_in.contiguous();
  const at::Tensor grad_z = grad_z_in.has_value() ? grad_z_in->contiguous() : at::Tensor();
  const at::Tensor grad_kl = grad_kl_in.has_value() ? grad_kl_in->contiguous() : at::Tensor();
  at::Tensor grad_mu = at::empty(mu.sizes(), mu.options());
  at::Tensor grad_logvar = at::empty(mu.sizes(), mu.options());
  if (mu.numel() == 0) return {grad_mu, grad_logvar};
  NoiseSource source;
  if (eps.has_value()) {
    source.eps = eps->contiguous();
  } else if (seed.has_value()) {
    source.draw = true;
    std::tie(source.key, source.offset) = read_seed(*seed);
  } else if (z.has_value()) {
    source.z = z->contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "reparametrize_kl_backward_cpu", [&] {
    const bool has_gz = grad_z.defined(), has_gkl = grad_kl.defined();
    if (has_gz && has_gkl) {
      backward_kernel<scalar_t, true, true>(grad_z, grad_kl, mu, logvar, source, grad_mu, grad_logvar);
    } else if (has_gz) {
      backward_kernel<scalar_t, true, false>(grad_z, grad_kl, mu, logvar, source, grad_mu, grad_logvar);
    } else if (has_gkl) {
      backward_kernel<scalar_t, false, true>(grad_z, grad_kl, mu, logvar, source, grad_mu, grad_logvar);
    } else {
      grad_mu.zero_();
      grad_logvar.zero_();
    }
  });
  return {grad_mu, grad_logvar};
}

}  // namespace

TORCH_LIBRARY_IMPL(autoenc_fast, CPU, m) {
  m.impl("reparametrize_kl", &reparametrize_kl_cpu);
  m.impl("reparametrize_kl_backward", &reparametrize_kl_backward_cpu);
}

}  // namespace autoenc_fast
