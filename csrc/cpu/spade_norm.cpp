// CPU kernels of the autoenc_fast::spade_norm ops (float32, float64).
//
// Statistics groups: per channel c over (N, H, W) for batch norm, per (n, c) over
// (H, W) for instance norm; M elements per group.
//   stats:    mean = k + S1 / M,  var = S2 / M - (S1 / M)^2  with  S1 = sum(x - k),
//             S2 = sum((x - k)^2), k = the group's first element. The sums are taken per
//             piece about the piece's own mean c: s1 = sum(x - c), s2 = sum((x - c)^2),
//             and moved to k in float64, S1 += s1 + n d, S2 += s2 + d (2 s1 + n d) with
//             d = c - k. The pieces are NCHW chunks of a row or a channels_last task's
//             rows, each centred by a first pass over it (the second reads it from cache).
//             Summing (x - k)^2 directly lost a spike k's group to (k - mean)^2 / var *
//             2^-24 (8e-2 off in y at 64x4x64x64); the exact centre also keeps a mean far
//             from 0 next to a small spread (Welford's float32 mean stops moving there).
//   apply:    xhat = (x - mean) * invstd,  z = xhat * (1 + gamma) + beta,
//             y = z, or leaky_relu(z, slope) = (z > 0 ? z : slope * z).
//   backward: dz = dy * (z > 0 ? 1 : slope) (z recomputed from x, never stored),
//             dxhat = dz * (1 + gamma), dgamma = dz * xhat, dbeta = dz,
//             reduce: A = sum dxhat, B = sum dxhat * xhat per group,
//             dx = invstd * (dxhat - A / M - xhat * B / M) with batch statistics,
//             dx = invstd * dxhat with fixed (running) statistics.
//
// Layouts: NCHW is read as N*C rows of H*W elements of one group; channels_last as
// N*H*W rows of C elements, channel c of a row in group c (batch) or n*C + c
// (instance). Both are vectorized with at::vec. Vector partial sums cover at most
// kChunk elements before they are added into float64, so float32 sums stay accurate;
// the combination order is fixed, so results do not depend on the thread count.
//
// The single-process ops (spade_norm with batch statistics, spade_norm_backward) run, in
// NCHW with rows of >= kMinBlockedRow elements or small tensors, one statistics group at a time: the
// group's reduction pass and then its elementwise pass, so the second pass reads the
// group from cache instead of memory. Other NCHW tensors take their backward in two
// sweeps, the first of which already writes dgamma and dbeta (backward_two_sweeps). The
// separate ops (stats, apply, backward_reduce, backward_elemt) serve the synchronized path,
// which must all_reduce between passes, and channels_last.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>


#include "../spade_norm_checks.h"
#include "streaming_store.h"

namespace autoenc_fast {
namespace {

constexpr int64_t kChunk = 1024;      // elements per vector partial sum (NCHW)
constexpr int64_t kRowsPerTask = 64;  // channels_last rows per reduction task
constexpr int64_t kGrainElems = 32768;
// NCHW rows at least this long run the cache-blocked passes; shorter rows (16x16 maps)
// are scattered 1 KiB pieces where the linear two-pass sweep prefetches better, unless
// the whole tensor is small enough to stay in cache anyway: then the blocked passes are
// used for what they save in calls (no separate statistics tensors and ATen ops between
// the passes), which is most of the time of a small op.
constexpr int64_t kMinBlockedRow = 1024;
constexpr int64_t kSmallTensorBytes = 512 * 1024;

// var = S2 / M - mean^2 can round to just below zero for a constant group; clamp that,
// but keep NaN as F.batch_norm does (std::max(0.0, NaN) is 0).
inline double clamp_variance(double v) { return v < 0.0 ? 0.0 : v; }

// invstd = 1 / sqrt(var + eps) in T, the one formula of every forward path: the
// backward takes the invstd the forward normalized with.
template <typename T>
T inverse_std(T var, double eps) {
  return T(1) / std::sqrt(var + static_cast<T>(eps));
}

template <typename T>
using Vec = at::vec::Vectorized<T>;
// Up to four per-group parameters (mean, invstd, ...) as vectors for one step.
template <typename T>
using Params = std::array<Vec<T>, 4>;
template <typename T>
using ParamPtrs = std::array<const T*, 4>;

// param_extra, param_pixel_stride: how gamma and beta are laid out (SpadeParams).
struct Geometry {
  int64_t N, C, HW;
  bool instance, channels_last;
  int64_t param_extra, param_pixel_stride;
  int64_t groups() const { return instance ? N * C : C; }
  int64_t group_elems() const { return instance ? HW : N * HW; }
  // Where row r starts in gamma and beta; in x and the outputs it starts at r * HW (NCHW:
  // row (n, c), sample r / C) or r * C (channels_last: row = pixel (n, h, w)).
  int64_t param_row(int64_t r) const {
    if (channels_last) return r * param_pixel_stride;
    return r * HW + (param_extra == 0 ? 0 : (r / C) * param_extra);
  }
};

Geometry geometry_of(const at::Tensor& x, bool instance, const SpadeParams* params = nullptr) {
  return {x.size(0), x.size(1), x.size(2) * x.size(3), instance,
          spade_memory_format(x) == at::MemoryFormat::ChannelsLast, params ? params->extra : 0,
          params ? params->pixel_stride : x.size(1)};
}

Geometry geometry_of(const SpadeLaidOut& t, bool instance) { return geometry_of(t.x, instance, &t.params); }

// Parallel tasks per at::parallel_for chunk for items of `item_elems` elements, so a chunk
// holds about kGrainElems; items of zero elements (an H, W or C of zero) count as one.
int64_t grain_for(int64_t item_elems) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, item_elems));
}

bool use_blocked_passes(const Geometry& geo, const at::Tensor& x) {
  return !geo.channels_last && x.numel() > 0 &&
         (geo.HW >= kMinBlockedRow || x.numel() * static_cast<int64_t>(x.element_size()) <= kSmallTensorBytes);
}

template <typename T>
Params<T> broadcast_params(const ParamPtrs<T>& p, int64_t g) {
  Params<T> v;
  for (size_t k = 0; k < p.size(); ++k) v[k] = p[k] != nullptr ? Vec<T>(p[k][g]) : Vec<T>(T(0));
  return v;
}

template <typename T>
Params<T> load_params(const ParamPtrs<T>& p, int64_t g0, int64_t count) {
  Params<T> v;
  for (size_t k = 0; k < p.size(); ++k) {
    v[k] = p[k] != nullptr ? Vec<T>::loadu(p[k] + g0, count) : Vec<T>(T(0));
  }
  return v;
}

// The step and term functions below capture the tensors' pointers and flags by value.
// The loops that call them work on a local copy of the function (`const Fn local = fn`):
// GCC may keep the fields of a copy whose address never escapes in registers, where the
// original, reached through a reference, had them loaded again after every vector store
// (intrinsic stores may alias anything; seen in the profile of the channels_last passes).

// Runs fn(offset, param_offset, count, params) over every vector step of the tensor:
// offset in x (and dy and the outputs), param_offset in gamma and beta; params hold the
// per-group parameters of the step's elements.
template <typename T, typename Fn>
void for_each_step(const Geometry& geo, const ParamPtrs<T>& p, const Fn& fn) {
  constexpr int64_t L = Vec<T>::size();
  if (!geo.channels_last) {
    const int64_t grain = grain_for(geo.HW);
    at::parallel_for(0, geo.N * geo.C, grain, [&](int64_t begin, int64_t end) {
      const Fn local = fn;
      for (int64_t r = begin; r < end; ++r) {
        const Params<T> v = broadcast_params(p, geo.instance ? r : r % geo.C);
        const int64_t base = r * geo.HW, pbase = geo.param_row(r);
        for (int64_t i = 0; i < geo.HW; i += L) local(base + i, pbase + i, std::min(L, geo.HW - i), v);
      }
      end_of_streaming_task();
    });
    return;
  }
  // channels_last: a row holds one element of every group; the groups' parameters are
  // gathered into vectors once per task (and per sample for instance norm), not per step.
  const int64_t grain = grain_for(geo.C);
  const int64_t vecs = (geo.C + L - 1) / L;
  at::parallel_for(0, geo.N * geo.HW, grain, [&](int64_t begin, int64_t end) {
    const Fn local = fn;
    std::vector<Params<T>> params(vecs);
    int64_t params_g0 = -1;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t g0 = geo.instance ? (r / geo.HW) * geo.C : 0;
      if (g0 != params_g0) {
        for (int64_t cv = 0; cv < vecs; ++cv) params[cv] = load_params(p, g0 + cv * L, std::min(L, geo.C - cv * L));
        params_g0 = g0;
      }
      const int64_t base = r * geo.C, pbase = geo.param_row(r);
      for (int64_t cv = 0; cv < vecs; ++cv) local(base + cv * L, pbase + cv * L, std::min(L, geo.C - cv * L), params[cv]);
    }
    end_of_streaming_task();
  });
}

// Statistics terms (x - c, (x - c)^2), params[0] = c; lanes past `count` masked to 0.
// The reductions recognise this term: row_sums sums NCHW chunks about their own means
// (centred_row_sums); reduce_groups centres channels_last tasks on theirs (params[0] = c)
// before this term adds them. Both return the sums moved to the shift params[0] = k.
template <typename T>
struct StatsTerm {
  const T* x;
  void operator()(int64_t i, int64_t /*pi*/, int64_t count, const Params<T>& v, Vec<T>& a1, Vec<T>& a2) const {
    const Vec<T> d = Vec<T>::set(Vec<T>(T(0)), Vec<T>::loadu(x + i, count) - v[0], count);
    a1 = a1 + d;
    a2 = at::vec::fmadd(d, d, a2);
  }
};

template <typename T>
StatsTerm<T> stats_term(const T* xp) {
  return {xp};
}

template <typename Fn>
constexpr bool kCentredSums = false;
template <typename T>
constexpr bool kCentredSums<StatsTerm<T>> = true;

template <typename T>
double lane_sum(const Vec<T>& v) {
  alignas(64) T lanes[Vec<T>::size()];
  v.store(lanes);
  double sum = 0;
  for (int64_t j = 0; j < Vec<T>::size(); ++j) sum += lanes[j];
  return sum;
}

template <typename T>
T first_lane(const Vec<T>& v) {
  alignas(64) T lanes[Vec<T>::size()];
  v.store(lanes);
  return lanes[0];
}

// The mean of the `len` contiguous elements at x, rounded to T: a chunk's centre. Two
// accumulators, as an add's latency, not the loads, bounds one.
template <typename T>
T chunk_mean(const T* x, int64_t len) {
  constexpr int64_t L = Vec<T>::size();
  Vec<T> s0(T(0)), s1(T(0));
  int64_t i = 0;
  for (; i + 2 * L <= len; i += 2 * L) {
    s0 = s0 + Vec<T>::loadu(x + i);
    s1 = s1 + Vec<T>::loadu(x + i + L);
  }
  for (; i < len; i += L) s0 = s0 + Vec<T>::loadu(x + i, std::min(L, len - i));  // tail lanes load 0
  return static_cast<T>(lane_sum(s0 + s1) / static_cast<double>(len));
}

// (sum(x - c), sum((x - c)^2)) over the `len` contiguous elements at x, in two chains.
template <typename T>
std::pair<double, double> sums_about(const T* x, int64_t len, T c) {
  constexpr int64_t L = Vec<T>::size();
  const Vec<T> centre(c), zero(T(0));
  Vec<T> a1(zero), a2(zero), b1(zero), b2(zero);
  int64_t i = 0;
  for (; i + 2 * L <= len; i += 2 * L) {
    const Vec<T> d = Vec<T>::loadu(x + i) - centre, e = Vec<T>::loadu(x + i + L) - centre;
    a1 = a1 + d;
    a2 = at::vec::fmadd(d, d, a2);
    b1 = b1 + e;
    b2 = at::vec::fmadd(e, e, b2);
  }
  for (; i < len; i += L) {
    const int64_t count = std::min(L, len - i);
    const Vec<T> d = Vec<T>::set(zero, Vec<T>::loadu(x + i, count) - centre, count);
    a1 = a1 + d;
    a2 = at::vec::fmadd(d, d, a2);
  }
  return {lane_sum(a1 + b1), lane_sum(a2 + b2)};
}

// Adds sums taken about the centre c, s1 = sum(x - c) and s2 = sum((x - c)^2) over n
// elements, to sums about the shift k: sum(x - k) = s1 + n d, sum((x - k)^2) = s2 + d (2 s1 + n d)
// with d = c - k, in float64, where the large terms of an outlying k cancel harmlessly.
inline void add_moved_sums(double n, double c, double k, double s1, double s2, double& t1, double& t2) {
  const double d = c - k;
  t1 += s1 + n * d;
  t2 += s2 + d * (2 * s1 + n * d);
}

// The statistics sums about k over the `len` contiguous elements at x: each chunk of at
// most kChunk elements summed about its own mean (its second pass reads it from cache).
template <typename T>
std::pair<double, double> centred_row_sums(const T* x, int64_t len, T k) {
  double t1 = 0, t2 = 0;
  for (int64_t i0 = 0; i0 < len; i0 += kChunk) {
    const int64_t n = std::min(kChunk, len - i0);
    const T centre = chunk_mean(x + i0, n);
    const auto sums = sums_about(x + i0, n, centre);
    add_moved_sums(static_cast<double>(n), centre, k, sums.first, sums.second, t1, t2);
  }
  return {t1, t2};
}

// (S1, S2) of fn over the `len` contiguous elements at `base` (at `pbase` in gamma and
// beta), all of one group: vector partial sums over at most kChunk elements, added into
// float64. The statistics term's sums are centred per chunk (centred_row_sums).
template <typename T, typename Fn>
std::pair<double, double> row_sums(int64_t base, int64_t pbase, int64_t len, const Params<T>& v, const Fn& fn) {
  if constexpr (kCentredSums<Fn>) {
    return centred_row_sums(fn.x + base, len, first_lane(v[0]));
  } else {
    constexpr int64_t L = Vec<T>::size();
    const Fn local = fn;
    const Params<T> lv = v;
    double t1 = 0, t2 = 0;
    for (int64_t i0 = 0; i0 < len; i0 += kChunk) {
      Vec<T> a1(T(0)), a2(T(0));
      const int64_t i1 = std::min(len, i0 + kChunk);
      for (int64_t i = i0; i < i1; i += L) local(base + i, pbase + i, std::min(L, i1 - i), lv, a1, a2);
      t1 += lane_sum(a1);
      t2 += lane_sum(a2);
    }
    return {t1, t2};
  }
}

// channels_last statistics: centres each channel of a task (rows h0..h1 of sample n) on
// its mean over those rows, params[cv][0], keeping the shift k in shifts[cv]; sums is
// scratch. The rows are read again by the sums pass, from cache.
template <typename T>
void centre_on_task_means(const T* x, const Geometry& geo, int64_t n, int64_t h0, int64_t h1,
                          std::vector<Params<T>>& params, std::vector<Vec<T>>& shifts, std::vector<Vec<T>>& sums) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t vecs = static_cast<int64_t>(params.size());
  for (int64_t h = h0; h < h1; ++h) {
    const T* row = x + (n * geo.HW + h) * geo.C;
    for (int64_t cv = 0; cv < vecs; ++cv) sums[cv] = sums[cv] + Vec<T>::loadu(row + cv * L, std::min(L, geo.C - cv * L));
  }
  const Vec<T> rows(static_cast<T>(h1 - h0));
  for (int64_t cv = 0; cv < vecs; ++cv) {
    shifts[cv] = params[cv][0];
    params[cv][0] = sums[cv] / rows;
    sums[cv] = Vec<T>(T(0));
  }
}

// Per-group sums (s1, s2) of the two terms fn(offset, count, params, acc1, acc2) adds.
template <typename T, typename Fn>
void reduce_groups(const Geometry& geo, const ParamPtrs<T>& p, const Fn& fn,
                   std::vector<double>& s1, std::vector<double>& s2) {
  constexpr int64_t L = Vec<T>::size();
  s1.assign(geo.groups(), 0.0);
  s2.assign(geo.groups(), 0.0);
  if (!geo.channels_last) {
    const int64_t rows = geo.N * geo.C;
    std::vector<double> part1(rows), part2(rows);
    at::parallel_for(0, rows, grain_for(geo.HW), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const auto sums = row_sums(r * geo.HW, geo.param_row(r), geo.HW,
                                   broadcast_params(p, geo.instance ? r : r % geo.C), fn);
        part1[r] = sums.first;
        part2[r] = sums.second;
      }
      end_of_streaming_task();  // a term may write outputs (backward_term<T, true>)
    });
    for (int64_t r = 0; r < rows; ++r) {  // fixed order: n ascending within each group
      const int64_t g = geo.instance ? r : r % geo.C;
      s1[g] += part1[r];
      s2[g] += part2[r];
    }
    return;
  }
  // channels_last: tasks of kRowsPerTask rows of one sample, each with C partial sums.
  const int64_t per_sample = (geo.HW + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t tasks = geo.N * per_sample;
  std::vector<double> part1(tasks * geo.C), part2(tasks * geo.C);
  const int64_t vecs = (geo.C + L - 1) / L;
  at::parallel_for(0, tasks, grain_for(kRowsPerTask * geo.C), [&](int64_t b, int64_t e) {
    const Fn local = fn;
    std::vector<Params<T>> params(vecs);
    std::vector<Vec<T>> acc1(vecs), acc2(vecs), shifts(vecs);
    alignas(64) T lanes1[L], lanes2[L], centres[L], lanes_k[L];
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / per_sample, h0 = (t % per_sample) * kRowsPerTask;
      const int64_t h1 = std::min(geo.HW, h0 + kRowsPerTask);
      const int64_t g0 = geo.instance ? n * geo.C : 0;
      for (int64_t cv = 0; cv < vecs; ++cv) {
        params[cv] = load_params(p, g0 + cv * L, std::min(L, geo.C - cv * L));
        acc1[cv] = acc2[cv] = Vec<T>(T(0));
      }
      if constexpr (kCentredSums<Fn>) centre_on_task_means(local.x, geo, n, h0, h1, params, shifts, acc1);
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t row = (n * geo.HW + h) * geo.C, prow = geo.param_row(n * geo.HW + h);
        for (int64_t cv = 0; cv < vecs; ++cv)
          local(row + cv * L, prow + cv * L, std::min(L, geo.C - cv * L), params[cv], acc1[cv], acc2[cv]);
      }
      for (int64_t cv = 0; cv < vecs; ++cv) {
        acc1[cv].store(lanes1);
        acc2[cv].store(lanes2);
        if constexpr (kCentredSums<Fn>) {
          params[cv][0].store(centres);
          shifts[cv].store(lanes_k);
        }
        for (int64_t j = 0; j < std::min(L, geo.C - cv * L); ++j) {
          double& s1 = part1[t * geo.C + cv * L + j];
          double& s2 = part2[t * geo.C + cv * L + j];
          if constexpr (kCentredSums<Fn>) {
            s1 = s2 = 0;
            add_moved_sums(static_cast<double>(h1 - h0), centres[j], lanes_k[j], lanes1[j], lanes2[j], s1, s2);
          } else {
            s1 = lanes1[j];
            s2 = lanes2[j];
          }
        }
      }
    }
    end_of_streaming_task();
  });
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t g0 = geo.instance ? (t / per_sample) * geo.C : 0;
    for (int64_t c = 0; c < geo.C; ++c) {
      s1[g0 + c] += part1[t * geo.C + c];
      s2[g0 + c] += part2[t * geo.C + c];
    }
  }
}

// z = xhat * (1 + gamma) + beta for one vector step (x at i, gamma and beta at pi); xhat
// is returned through xhat_out.
template <typename T>
inline Vec<T> affine_step(const T* x, const T* gamma, const T* beta, int64_t i, int64_t pi, int64_t count,
                          const Params<T>& v, Vec<T>& one_g, Vec<T>& xhat) {
  xhat = (Vec<T>::loadu(x + i, count) - v[0]) * v[1];
  one_g = Vec<T>(T(1)) + Vec<T>::loadu(gamma + pi, count);
  return at::vec::fmadd(xhat, one_g, Vec<T>::loadu(beta + pi, count));
}

// leaky_relu(z) (the value) or its derivative times g (the gradient), selected on z > 0.
template <typename T>
inline Vec<T> leaky_select(const Vec<T>& z, const Vec<T>& g, bool has_slope, T slope) {
  if (!has_slope) return g;
  return Vec<T>::blendv(g * Vec<T>(slope), g, z > Vec<T>(T(0)));
}

// The tensors one pass reads and writes, and the activation.
template <typename T>
struct Pointers {
  const T *dy, *x, *gamma, *beta;
  T *out0, *out1, *out2;  // y, or dx, dgamma, dbeta
  // dgamma and dbeta at gamma's and beta's offsets (the halves of one merged gradient,
  // spade_norm_merged_backward), else at x's.
  bool grads_at_params;
  bool has_slope;
  T slope;
  bool stream;  // streaming stores for the outputs (set with them, from their size)
};

// The inputs of a pass (laid out by spade_lay_out), and where dgamma and dbeta go when it
// writes them (out1, out2, grads_at_params: set from `grads`).
template <typename T>
Pointers<T> pointers(const SpadeLaidOut& t, std::optional<double> slope, const SpadeParamGrads* grads = nullptr) {
  return {t.dy.defined() ? t.dy.const_data_ptr<T>() : nullptr,
          t.x.const_data_ptr<T>(),
          t.params.gamma.const_data_ptr<T>(),
          t.params.beta.const_data_ptr<T>(),
          nullptr,
          grads ? grads->dgamma.mutable_data_ptr<T>() : nullptr,
          grads ? grads->dbeta.mutable_data_ptr<T>() : nullptr,
          grads ? grads->at_params : false,
          slope.has_value(),
          static_cast<T>(slope.value_or(0.0)),
          stream_output(t.x.numel(), sizeof(T))};
}

// y = act(xhat * (1 + gamma) + beta), params = (mean, invstd).
template <typename T>
auto apply_step(const Pointers<T>& p) {
  return [p](int64_t i, int64_t pi, int64_t count, const Params<T>& v) {
    Vec<T> one_g, xhat;
    const Vec<T> z = affine_step(p.x, p.gamma, p.beta, i, pi, count, v, one_g, xhat);
    store_out<T>(leaky_select(z, z, p.has_slope, p.slope), p.out0 + i, count, p.stream);
  };
}

// Backward terms (dxhat, dxhat * xhat), params = (mean, invstd). Lanes past `count`
// load dy = 0, so they add nothing. kWriteParamGrads: also write the two outputs that need
// no reduced sums, dgamma = dz * xhat (out1) and dbeta = dz (out2).
template <typename T, bool kWriteParamGrads = false>
auto backward_term(const Pointers<T>& p) {
  return [p](int64_t i, int64_t pi, int64_t count, const Params<T>& v, Vec<T>& a1, Vec<T>& a2) {
    Vec<T> one_g, xhat;
    const Vec<T> z = affine_step(p.x, p.gamma, p.beta, i, pi, count, v, one_g, xhat);
    const Vec<T> dz = leaky_select(z, Vec<T>::loadu(p.dy + i, count), p.has_slope, p.slope);
    const Vec<T> dxhat = dz * one_g;
    if constexpr (kWriteParamGrads) {
      const int64_t gi = p.grads_at_params ? pi : i;
      store_out<T>(dz * xhat, p.out1 + gi, count, p.stream);
      store_out<T>(dz, p.out2 + gi, count, p.stream);
    }
    a1 = a1 + dxhat;
    a2 = at::vec::fmadd(dxhat, xhat, a2);
  };
}

// dx from dz = dbeta (p.out2, written by backward_term<T, true>), x and gamma: beta is not
// read again; params as backward_step's.
template <typename T>
auto backward_dx_step(const Pointers<T>& p) {
  return [p](int64_t i, int64_t pi, int64_t count, const Params<T>& v) {
    const Vec<T> xhat = (Vec<T>::loadu(p.x + i, count) - v[0]) * v[1];
    const Vec<T> dz = Vec<T>::loadu(p.out2 + (p.grads_at_params ? pi : i), count);
    const Vec<T> dxhat = dz * (Vec<T>(T(1)) + Vec<T>::loadu(p.gamma + pi, count));
    store_out<T>((dxhat - v[2] - xhat * v[3]) * v[1], p.out0 + i, count, p.stream);
  };
}

// dx, dgamma, dbeta; params = (mean, invstd, mean_dxhat, mean_dxhat_xhat), the last two
// zero with fixed statistics, where dx = invstd * dxhat.
template <typename T>
auto backward_step(const Pointers<T>& p) {
  return [p](int64_t i, int64_t pi, int64_t count, const Params<T>& v) {
    Vec<T> one_g, xhat;
    const Vec<T> z = affine_step(p.x, p.gamma, p.beta, i, pi, count, v, one_g, xhat);
    const Vec<T> dz = leaky_select(z, Vec<T>::loadu(p.dy + i, count), p.has_slope, p.slope);
    const Vec<T> dxhat = dz * one_g;
    store_out<T>((dxhat - v[2] - xhat * v[3]) * v[1], p.out0 + i, count, p.stream);
    const int64_t gi = p.grads_at_params ? pi : i;
    store_out<T>(dz * xhat, p.out1 + gi, count, p.stream);
    store_out<T>(dz, p.out2 + gi, count, p.stream);
  };
}

// mean and var per group; with `invstd` defined, also invstd = 1 / sqrt(var + eps).
template <typename T>
void stats_kernel(const at::Tensor& x, const Geometry& geo, at::Tensor& mean, at::Tensor& var,
                  at::Tensor* invstd = nullptr, double eps = 0) {
  const T* xp = x.const_data_ptr<T>();
  std::vector<T> shift(geo.groups());
  for (int64_t g = 0; g < geo.groups(); ++g) {  // the group's first element
    if (!geo.channels_last) {
      shift[g] = xp[g * geo.HW];
    } else {
      const int64_t n = geo.instance ? g / geo.C : 0, c = g % geo.C;
      shift[g] = xp[n * geo.HW * geo.C + c];
    }
  }
  std::vector<double> s1, s2;
  reduce_groups<T>(geo, {shift.data(), nullptr, nullptr, nullptr}, stats_term(xp), s1, s2);
  T* mp = mean.mutable_data_ptr<T>();
  T* vp = var.mutable_data_ptr<T>();
  T* ip = invstd != nullptr ? invstd->mutable_data_ptr<T>() : nullptr;
  const double m = static_cast<double>(geo.group_elems());
  for (int64_t g = 0; g < geo.groups(); ++g) {
    const double d = s1[g] / m;
    mp[g] = static_cast<T>(shift[g] + d);
    vp[g] = static_cast<T>(clamp_variance(s2[g] / m - d * d));
    if (ip != nullptr) ip[g] = inverse_std(vp[g], eps);
  }
}

template <typename T>
void apply_kernel(Pointers<T> p, const at::Tensor& mean, const at::Tensor& invstd, const Geometry& geo,
                  at::Tensor& y) {
  p.out0 = y.mutable_data_ptr<T>();
  for_each_step<T>(geo, {mean.const_data_ptr<T>(), invstd.const_data_ptr<T>(), nullptr, nullptr},
                   apply_step(p));
}

template <typename T>
void backward_reduce_kernel(const Pointers<T>& p, const at::Tensor& mean, const at::Tensor& invstd,
                            const Geometry& geo, at::Tensor& sum1, at::Tensor& sum2) {
  std::vector<double> s1, s2;
  reduce_groups<T>(geo, {mean.const_data_ptr<T>(), invstd.const_data_ptr<T>(), nullptr, nullptr},
                   backward_term(p), s1, s2);
  T *p1 = sum1.mutable_data_ptr<T>(), *p2 = sum2.mutable_data_ptr<T>();
  for (int64_t g = 0; g < geo.groups(); ++g) {
    p1[g] = static_cast<T>(s1[g]);
    p2[g] = static_cast<T>(s2[g]);
  }
}

// p: with dgamma and dbeta's pointers (pointers() with the grads).
template <typename T>
void backward_elemt_kernel(Pointers<T> p, const at::Tensor& mean, const at::Tensor& invstd,
                           const at::Tensor& mean_dxhat, const at::Tensor& mean_dxhat_xhat,
                           const Geometry& geo, at::Tensor& dx) {
  p.out0 = dx.mutable_data_ptr<T>();
  const bool batch_stats = mean_dxhat.defined();
  for_each_step<T>(geo, {mean.const_data_ptr<T>(), invstd.const_data_ptr<T>(),
                         batch_stats ? mean_dxhat.const_data_ptr<T>() : nullptr,
                         batch_stats ? mean_dxhat_xhat.const_data_ptr<T>() : nullptr},
                   backward_step(p));
}

// ---- NCHW fused passes, one statistics group at a time: a group's rows (r = g + k*C,
// k < N, for batch norm; r = g for instance norm) are reduced and then immediately
// transformed, so the second pass reads them from cache, not from memory.

template <typename Fn>
void for_each_group_nchw(const Geometry& geo, const Fn& fn) {
  const int64_t grain = grain_for(geo.group_elems());
  at::parallel_for(0, geo.groups(), grain, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) fn(g);
    end_of_streaming_task();
  });
}

template <typename T, typename Fn>
std::pair<double, double> group_sums(const Geometry& geo, int64_t g, const Params<T>& v, const Fn& term) {
  double t1 = 0, t2 = 0;
  for (int64_t k = 0; k < (geo.instance ? 1 : geo.N); ++k) {
    const int64_t r = g + k * geo.C;
    const auto sums = row_sums(r * geo.HW, geo.param_row(r), geo.HW, v, term);
    t1 += sums.first;
    t2 += sums.second;
  }
  return {t1, t2};
}

template <typename T, typename Fn>
void group_steps(const Geometry& geo, int64_t g, const Params<T>& v, const Fn& step) {
  constexpr int64_t L = Vec<T>::size();
  const Fn local = step;
  const Params<T> lv = v;
  for (int64_t k = 0; k < (geo.instance ? 1 : geo.N); ++k) {
    const int64_t r = g + k * geo.C, base = r * geo.HW, pbase = geo.param_row(r);
    for (int64_t i = 0; i < geo.HW; i += L) local(base + i, pbase + i, std::min(L, geo.HW - i), lv);
  }
}

template <typename T>
Params<T> group_params(T a, T b, T c = T(0), T d = T(0)) {
  return {Vec<T>(a), Vec<T>(b), Vec<T>(c), Vec<T>(d)};
}

template <typename T>
void fused_forward_nchw(Pointers<T> p, const Geometry& geo, double eps, at::Tensor& y,
                        at::Tensor& mean, at::Tensor& var, at::Tensor& invstd) {
  p.out0 = y.mutable_data_ptr<T>();
  T *mp = mean.mutable_data_ptr<T>(), *vp = var.mutable_data_ptr<T>(), *ip = invstd.mutable_data_ptr<T>();
  const double m = static_cast<double>(geo.group_elems());
  for_each_group_nchw(geo, [&](int64_t g) {
    const T shift = p.x[g * geo.HW];
    const auto sums = group_sums<T>(geo, g, group_params<T>(shift, T(0)), stats_term(p.x));
    const double d = sums.first / m;
    mp[g] = static_cast<T>(shift + d);
    vp[g] = static_cast<T>(clamp_variance(sums.second / m - d * d));
    ip[g] = inverse_std(vp[g], eps);
    group_steps<T>(geo, g, group_params<T>(mp[g], ip[g]), apply_step(p));
  });
}

// p: with dgamma and dbeta's pointers (pointers() with the grads).
template <typename T>
void fused_backward_nchw(Pointers<T> p, const at::Tensor& mean, const at::Tensor& invstd,
                         bool use_input_stats, const Geometry& geo, at::Tensor& dx) {
  p.out0 = dx.mutable_data_ptr<T>();
  const T *mp = mean.const_data_ptr<T>(), *ip = invstd.const_data_ptr<T>();
  const double m = static_cast<double>(geo.group_elems());
  for_each_group_nchw(geo, [&](int64_t g) {
    Params<T> v = group_params<T>(mp[g], ip[g]);
    if (use_input_stats) {
      const auto sums = group_sums<T>(geo, g, v, backward_term(p));
      v = group_params<T>(mp[g], ip[g], static_cast<T>(static_cast<T>(sums.first) / m),
                          static_cast<T>(static_cast<T>(sums.second) / m));
    }
    group_steps<T>(geo, g, v, backward_step(p));
  });
}

void check_cpu_dtype(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": the CPU kernel takes float32 or float64 `x`; got ", x.scalar_type());
}

// mean and var per group; with `eps`, also invstd = 1 / sqrt(var + eps) (same pass).
std::tuple<at::Tensor, at::Tensor, at::Tensor> stats_impl(const at::Tensor& x_in, bool instance,
                                                          std::optional<double> eps = std::nullopt) {
  const at::Tensor x = x_in.contiguous(spade_memory_format(x_in));
  at::Tensor mean = spade_empty_stats(x, instance), var = spade_empty_stats(x, instance), invstd;
  if (x.numel() == 0) {  // nothing to average: zeros, and the caller skips running updates
    mean.zero_();
    var.zero_();
    if (eps.has_value()) invstd = (var + *eps).rsqrt();
    return {mean, var, invstd};
  }
  if (eps.has_value()) invstd = spade_empty_stats(x, instance);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spade_norm_stats_cpu", [&] {
    stats_kernel<scalar_t>(x, geometry_of(x, instance), mean, var, invstd.defined() ? &invstd : nullptr,
                           eps.value_or(0.0));
  });
  return {mean, var, invstd};
}

at::Tensor apply_impl(const SpadeLaidOut& t, const at::Tensor& mean, const at::Tensor& invstd,
                      std::optional<double> slope) {
  at::Tensor y = spade_empty_like_x(t.x);
  if (t.x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(t.x.scalar_type(), "spade_norm_apply_cpu", [&] {
    apply_kernel<scalar_t>(pointers<scalar_t>(t, slope), mean.contiguous(), invstd.contiguous(),
                           geometry_of(t, mean.dim() == 2), y);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> backward_reduce_impl(const SpadeLaidOut& t, const at::Tensor& mean,
                                                        const at::Tensor& invstd,
                                                        std::optional<double> slope) {
  at::Tensor sum1 = at::zeros_like(mean, at::MemoryFormat::Contiguous);
  at::Tensor sum2 = at::zeros_like(mean, at::MemoryFormat::Contiguous);
  if (t.x.numel() == 0) return {sum1, sum2};
  AT_DISPATCH_FLOATING_TYPES(t.x.scalar_type(), "spade_norm_backward_reduce_cpu", [&] {
    backward_reduce_kernel<scalar_t>(pointers<scalar_t>(t, slope), mean.contiguous(), invstd.contiguous(),
                                     geometry_of(t, mean.dim() == 2), sum1, sum2);
  });
  return {sum1, sum2};
}

// dx of the elementwise backward pass; dgamma and dbeta into `grads`.
at::Tensor backward_elemt_impl(const SpadeLaidOut& t, const at::Tensor& mean, const at::Tensor& invstd,
                               const at::Tensor& mean_dxhat, const at::Tensor& mean_dxhat_xhat,
                               const SpadeParamGrads& grads, std::optional<double> slope) {
  at::Tensor dx = spade_empty_like_x(t.x);
  if (t.x.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES(t.x.scalar_type(), "spade_norm_backward_elemt_cpu", [&] {
    backward_elemt_kernel<scalar_t>(pointers<scalar_t>(t, slope, &grads), mean.contiguous(), invstd.contiguous(),
                                    mean_dxhat.defined() ? mean_dxhat.contiguous() : at::Tensor(),
                                    mean_dxhat_xhat.defined() ? mean_dxhat_xhat.contiguous() : at::Tensor(),
                                    geometry_of(t, mean.dim() == 2), dx);
  });
  return dx;
}

// running = (1 - momentum) * running + momentum * scale * stat, in float64 (as F.batch_norm
// updates its buffers; they may have any floating dtype).
void update_running_cpu(const at::Tensor& running, const at::Tensor& stat, double momentum, double scale) {
  spade_update_running(running, [&](at::Tensor& target) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "spade_norm_running_cpu", [&] {
      using running_t = scalar_t;
      running_t* r = target.mutable_data_ptr<running_t>();
      AT_DISPATCH_FLOATING_TYPES(stat.scalar_type(), "spade_norm_running_stat_cpu", [&] {
        const scalar_t* v = stat.const_data_ptr<scalar_t>();
        for (int64_t c = 0; c < target.numel(); ++c) {
          r[c] = static_cast<running_t>((1 - momentum) * static_cast<double>(r[c]) +
                                        momentum * scale * static_cast<double>(v[c]));
        }
      });
    });
  });
}

// y, mean and invstd with batch statistics: cache-blocked statistics and apply per group
// where use_blocked_passes says so, else the two passes; var into `var`.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_stats_forward(const SpadeLaidOut& t, bool instance, double eps,
                                                                   std::optional<double> slope, at::Tensor& var) {
  const Geometry geo = geometry_of(t, instance);
  at::Tensor mean, invstd;
  if (use_blocked_passes(geo, t.x)) {
    at::Tensor y = spade_empty_like_x(t.x);
    mean = spade_empty_stats(t.x, instance), var = spade_empty_stats(t.x, instance);
    invstd = spade_empty_stats(t.x, instance);
    AT_DISPATCH_FLOATING_TYPES(t.x.scalar_type(), "spade_norm_cpu", [&] {
      fused_forward_nchw<scalar_t>(pointers<scalar_t>(t, slope), geo, eps, y, mean, var, invstd);
    });
    return {y, mean, invstd};
  }
  std::tie(mean, var, invstd) = stats_impl(t.x, instance, eps);
  return {apply_impl(t, mean, invstd, slope), mean, invstd};
}

// The single-process forward (spade_norm and spade_norm_merged).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const SpadeLaidOut& t, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool use_input_stats, bool instance, double momentum,
    double eps, std::optional<double> slope) {
  return spade_single_process_forward(
      t.x, running_mean, running_var, use_input_stats, momentum, eps,
      [&](const at::Tensor& mean, const at::Tensor& invstd) { return apply_impl(t, mean, invstd, slope); },
      [&](at::Tensor& var) { return batch_stats_forward(t, instance, eps, slope, var); }, update_running_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spade_norm_cpu(
    const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    bool use_input_stats, bool instance, double momentum, double eps, std::optional<double> slope) {
  check_spade_forward_inputs(x, gamma, beta, running_mean, running_var, use_input_stats, instance);
  check_cpu_dtype(x, "spade_norm");
  return forward_impl(spade_lay_out({}, x, gamma, beta), running_mean, running_var, use_input_stats, instance,
                      momentum, eps, slope);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spade_norm_merged_cpu(
    const at::Tensor& x, const at::Tensor& gamma_beta, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool use_input_stats, bool instance, double momentum,
    double eps, std::optional<double> slope) {
  check_spade_forward_inputs(x, gamma_beta, {}, running_mean, running_var, use_input_stats, instance,
                             "spade_norm_merged");
  check_cpu_dtype(x, "spade_norm_merged");
  return forward_impl(spade_lay_out_merged({}, x, gamma_beta), running_mean, running_var, use_input_stats,
                      instance, momentum, eps, slope);
}

std::tuple<at::Tensor, at::Tensor> spade_norm_stats_cpu(const at::Tensor& x, bool instance) {
  check_spade_x(x, "spade_norm_stats");
  check_cpu_dtype(x, "spade_norm_stats");
  auto [mean, var, unused] = stats_impl(x, instance);
  return {mean, var};
}

at::Tensor spade_norm_apply_cpu(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                                const at::Tensor& mean, const at::Tensor& invstd,
                                std::optional<double> slope) {
  check_spade_apply_inputs(x, gamma, beta, mean, invstd, "spade_norm_apply");
  check_cpu_dtype(x, "spade_norm_apply");
  return apply_impl(spade_lay_out({}, x, gamma, beta), mean, invstd, slope);
}

std::tuple<at::Tensor, at::Tensor> spade_norm_backward_reduce_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
    const at::Tensor& mean, const at::Tensor& invstd, std::optional<double> slope) {
  check_spade_backward_inputs(grad_y, x, gamma, beta, mean, invstd, "spade_norm_backward_reduce");
  check_cpu_dtype(x, "spade_norm_backward_reduce");
  return backward_reduce_impl(spade_lay_out(grad_y, x, gamma, beta), mean, invstd, slope);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spade_norm_backward_elemt_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
    const at::Tensor& mean, const at::Tensor& invstd, const std::optional<at::Tensor>& mean_dxhat,
    const std::optional<at::Tensor>& mean_dxhat_xhat, std::optional<double> slope) {
  check_spade_elemt_inputs(grad_y, x, gamma, beta, mean, invstd, mean_dxhat, mean_dxhat_xhat);
  check_cpu_dtype(x, "spade_norm_backward_elemt");
  return spade_backward_separate(grad_y, x, gamma, beta, [&](const SpadeLaidOut& t, const SpadeParamGrads& grads) {
    return backward_elemt_impl(t, mean, invstd, mean_dxhat.value_or(at::Tensor()),
                               mean_dxhat_xhat.value_or(at::Tensor()), grads, slope);
  });
}

std::tuple<at::Tensor, at::Tensor> spade_norm_merged_backward_elemt_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma_beta, const at::Tensor& mean,
    const at::Tensor& invstd, const std::optional<at::Tensor>& mean_dxhat,
    const std::optional<at::Tensor>& mean_dxhat_xhat, std::optional<double> slope) {
  check_spade_elemt_inputs(grad_y, x, gamma_beta, {}, mean, invstd, mean_dxhat, mean_dxhat_xhat);
  check_cpu_dtype(x, "spade_norm_merged_backward_elemt");
  return spade_backward_merged(grad_y, x, gamma_beta, [&](const SpadeLaidOut& t, const SpadeParamGrads& grads) {
    return backward_elemt_impl(t, mean, invstd, mean_dxhat.value_or(at::Tensor()),
                               mean_dxhat_xhat.value_or(at::Tensor()), grads, slope);
  });
}

// Single-process backward with batch statistics in NCHW, when the group-blocked passes do
// not apply (short rows of a large tensor): two sweeps, the first reading dy, x, gamma and
// beta, summing, and writing dgamma and dbeta; the second reading dbeta (= dz), x and gamma
// and writing dx. Ten tensor passes instead of the separate ops' eleven, and no second
// recomputation of z: 16-17 % faster at 8x1024x16x16. Not for channels_last: slower there
// while its reduction strode C apart (6.4 -> 8.0 ms), and no faster once it walked rows in
// memory order (4.7-5.4 ms on one thread either way). Returns dx.
at::Tensor backward_two_sweeps(const SpadeLaidOut& t, const at::Tensor& mean, const at::Tensor& invstd,
                               const Geometry& geo, const SpadeParamGrads& grads, std::optional<double> slope) {
  at::Tensor dx = spade_empty_like_x(t.x);
  AT_DISPATCH_FLOATING_TYPES(t.x.scalar_type(), "spade_norm_backward_cpu", [&] {
    Pointers<scalar_t> p = pointers<scalar_t>(t, slope, &grads);
    const at::Tensor mean_c = mean.contiguous(), invstd_c = invstd.contiguous();
    const ParamPtrs<scalar_t> stats = {mean_c.const_data_ptr<scalar_t>(), invstd_c.const_data_ptr<scalar_t>(),
                                       nullptr, nullptr};
    std::vector<double> s1, s2;
    reduce_groups<scalar_t>(geo, stats, backward_term<scalar_t, true>(p), s1, s2);
    const double m = static_cast<double>(std::max<int64_t>(1, geo.group_elems()));
    std::vector<scalar_t> mean_dxhat(geo.groups()), mean_dxhat_xhat(geo.groups());
    for (int64_t g = 0; g < geo.groups(); ++g) {  // as backward_reduce_impl + sum / m round it
      mean_dxhat[g] = static_cast<scalar_t>(static_cast<scalar_t>(s1[g]) / m);
      mean_dxhat_xhat[g] = static_cast<scalar_t>(static_cast<scalar_t>(s2[g]) / m);
    }
    p.out0 = dx.mutable_data_ptr<scalar_t>();
    for_each_step<scalar_t>(geo, {stats[0], stats[1], mean_dxhat.data(), mean_dxhat_xhat.data()},
                            backward_dx_step(p));
  });
  return dx;
}

// Single-process backward (spade_norm_backward and spade_norm_merged_backward):
// cache-blocked reduce + elementwise per group in NCHW with long rows; else the two
// passes one after the other. Returns dx; dgamma and dbeta go into `grads`.
at::Tensor backward_impl(const SpadeLaidOut& t, const at::Tensor& mean, const at::Tensor& invstd,
                         bool use_input_stats, const SpadeParamGrads& grads, std::optional<double> slope) {
  const Geometry geo = geometry_of(t, mean.dim() == 2);
  if (use_input_stats && !geo.channels_last && !use_blocked_passes(geo, t.x)) {
    return backward_two_sweeps(t, mean, invstd, geo, grads, slope);
  }
  if (!use_blocked_passes(geo, t.x)) {
    at::Tensor mean_dxhat, mean_dxhat_xhat;
    if (use_input_stats) {
      auto [sum1, sum2] = backward_reduce_impl(t, mean, invstd, slope);
      const double m = static_cast<double>(std::max<int64_t>(1, geo.group_elems()));
      mean_dxhat = sum1 / m;
      mean_dxhat_xhat = sum2 / m;
    }
    return backward_elemt_impl(t, mean, invstd, mean_dxhat, mean_dxhat_xhat, grads, slope);
  }
  at::Tensor dx = spade_empty_like_x(t.x);
  AT_DISPATCH_FLOATING_TYPES(t.x.scalar_type(), "spade_norm_backward_cpu", [&] {
    fused_backward_nchw<scalar_t>(pointers<scalar_t>(t, slope, &grads), mean.contiguous(), invstd.contiguous(),
                                  use_input_stats, geo, dx);
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spade_norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
    const at::Tensor& mean, const at::Tensor& invstd, bool use_input_stats,
    std::optional<double> slope) {
  check_spade_backward_inputs(grad_y, x, gamma, beta, mean, invstd, "spade_norm_backward");
  check_cpu_dtype(x, "spade_norm_backward");
  return spade_backward_separate(grad_y, x, gamma, beta, [&](const SpadeLaidOut& t, const SpadeParamGrads& grads) {
    return backward_impl(t, mean, invstd, use_input_stats, grads, slope);
  });
}

std::tuple<at::Tensor, at::Tensor> spade_norm_merged_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma_beta, const at::Tensor& mean,
    const at::Tensor& invstd, bool use_input_stats, std::optional<double> slope) {
  check_spade_backward_inputs(grad_y, x, gamma_beta, {}, mean, invstd, "spade_norm_merged_backward");
  check_cpu_dtype(x, "spade_norm_merged_backward");
  return spade_backward_merged(grad_y, x, gamma_beta, [&](const SpadeLaidOut& t, const SpadeParamGrads& grads) {
    return backward_impl(t, mean, invstd, use_input_stats, grads, slope);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(autoenc_fast, CPU, m) {
  m.impl("spade_norm", &spade_norm_cpu);
  m.impl("spade_norm_merged", &spade_norm_merged_cpu);
  m.impl("spade_norm_stats", &spade_norm_stats_cpu);
  m.impl("spade_norm_apply", &spade_norm_apply_cpu);
  m.impl("spade_norm_backward", &spade_norm_backward_cpu);
  m.impl("spade_norm_merged_backward", &spade_norm_merged_backward_cpu);
  m.impl("spade_norm_backward_reduce", &spade_norm_backward_reduce_cpu);
  m.impl("spade_norm_backward_elemt", &spade_norm_backward_elemt_cpu);
  m.impl("spade_norm_merged_backward_elemt", &spade_norm_merged_backward_elemt_cpu);
}

}  // namespace autoenc_fast
