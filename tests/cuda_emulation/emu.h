// A CUDA emulator for this project's kernels, so that their logic (indexing, tiling,
// bounds, barriers, warp reductions) is checked on a machine without a GPU, in every CI
// run. tests/cuda_emulation/__init__.py rewrites a csrc/cuda/*.cu file into C++ that
// includes this header and compiles it as a CPU extension whose ops live in the
// `autoenc_fast_emu` namespace.
//
// Each kernel launch runs its blocks one after another; each block's threads run as
// fibers (ucontext) on one OS thread. A fiber runs until it reaches __syncthreads() or a
// warp shuffle, then the next fiber runs; a barrier opens when every live thread of the
// block (or of the warp, for a shuffle) has reached it. Warps run one after another, each
// as far ahead as its barriers let it. Threads that already returned
// count as arrived, as on sm_70 and newer. A barrier that can never open (some thread
// waits at a __syncthreads() the others passed by or returned from) is reported as an
// error naming the kernel, not a hang. Launch configurations the CUDA runtime rejects
// (more than 1024 threads, a grid dimension y or z over 65535, more dynamic shared memory
// than the 48 KiB default) raise as well.
//
// Warps and their lanes run in order, or in reverse order when
// AUTOENC_FAST_EMU_SCHEDULE=reverse: a kernel that reads what another thread writes
// without a barrier between them gives different results under the two orders (the tests
// compare them). That is the only race
// check here; speed, coalescing and the GPU's floating-point details (fused multiply-adds,
// fast math) stay with the GPU check (benchmarks/gpu_check.sh).
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

// ------------------------------------------------------------ CUDA keywords and types
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // blocks run one at a time, so one instance serves every block

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
inline dim3 blockDim, gridDim;

// CUDA's min/max: on floating point, fminf/fmaxf, which return the other operand when one
// is NaN (so a kernel that lets max() meet a NaN behaves here as on the GPU).
template <typename A, typename B>
constexpr auto min(A a, B b) -> decltype(a + b) {
  if constexpr (std::is_floating_point_v<decltype(a + b)>) {
    if (a != a) return b;
    if (b != b) return a;
  }
  return b < a ? b : a;
}
template <typename A, typename B>
constexpr auto max(A a, B b) -> decltype(a + b) {
  if constexpr (std::is_floating_point_v<decltype(a + b)>) {
    if (a != a) return b;
    if (b != b) return a;
  }
  return a < b ? b : a;
}

// ------------------------------------------------------------ CUDA runtime and c10::cuda stand-ins
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
// Few multiprocessors, so that grid-stride loops sized by the SM count take several turns.
constexpr int kEmulatedMultiprocessors = 2;
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? kEmulatedMultiprocessors : 0;
  return cudaSuccess;
}
#define C10_CUDA_CHECK(expr) TORCH_CHECK((expr) == cudaSuccess, #expr " failed")
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)

namespace c10::cuda {
struct CUDAStream {};
inline CUDAStream getCurrentCUDAStream() { return {}; }
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda

namespace emu {

// ------------------------------------------------------------ fibers and barriers
enum class State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  ucontext_t context;
  State state = State::kRunnable;
  uint3 index{0, 0, 0};
  int barrier_site = 0;  // the source line of the __syncthreads() call it waits at
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<std::vector<char>> stacks;
  std::vector<uint64_t> exchange;  // one slot per thread: warp shuffles
  std::vector<unsigned char> dynamic_shared;
  ucontext_t scheduler;
  size_t current = 0;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
};

inline Block* g_block = nullptr;
constexpr size_t kStackBytes = 64 * 1024;
constexpr unsigned char kPoisonByte = 0xFF;  // NaN in every floating type

inline void fiber_main() {
  Block& b = *g_block;
  b.body(b.body_arg);
  b.fibers[b.current].state = State::kDone;
  // uc_link returns to the scheduler
}

inline void wait_at(State barrier, int site = 0) {
  Block& b = *g_block;
  Fiber& self = b.fibers[b.current];
  self.state = barrier;
  self.barrier_site = site;
  swapcontext(&self.context, &b.scheduler);
}

inline unsigned linear_thread() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

enum class Opened { kYes, kNo, kDivergent };

// Opens `barrier` for threads [first, end) (a warp's lanes, or the whole block) if every
// live one of them waits at it, at the same call. (Shuffles record no call site.)
inline Opened open_barrier(Block& b, size_t first, size_t end, State barrier) {
  bool waiting = false, all = true;
  int site = 0;
  for (size_t i = first; i < end; ++i) {
    const Fiber& f = b.fibers[i];
    waiting |= f.state == barrier;
    all &= f.state == barrier || f.state == State::kDone;
    if (f.state != barrier) continue;
    // The hardware would count arrivals at different __syncthreads() calls as one
    // barrier; CUDA leaves it undefined, so it is an error here.
    if (site != 0 && f.barrier_site != site) return Opened::kDivergent;
    site = f.barrier_site;
  }
  if (!(waiting && all)) return Opened::kNo;
  for (size_t i = first; i < end; ++i)
    if (b.fibers[i].state == barrier) b.fibers[i].state = State::kRunnable;
  return Opened::kYes;
}

inline bool reverse_schedule() {
  const char* order = std::getenv("AUTOENC_FAST_EMU_SCHEDULE");
  return order != nullptr && std::strcmp(order, "reverse") == 0;
}

// Runs the lanes [first, end) of one warp as far as they go: each lane until it blocks,
// the warp's shuffle barrier opened as soon as all its live lanes wait there, until every
// lane waits at the block barrier or has returned. So a warp runs ahead of the warps after
// it, as far as the code lets it: a write to shared memory that the others still have to
// read, with no barrier in between, lands before they read it. Returns whether any ran.
inline bool run_warp(Block& b, size_t first, size_t end, bool reverse) {
  bool ran_any = false;
  for (;;) {
    for (size_t n = 0; n < end - first; ++n) {
      const size_t i = reverse ? end - 1 - n : first + n;
      if (b.fibers[i].state != State::kRunnable) continue;
      b.current = i;
      threadIdx = b.fibers[i].index;
      swapcontext(&b.scheduler, &b.fibers[i].context);
      ran_any = true;
    }
    if (open_barrier(b, first, end, State::kAtWarpBarrier) != Opened::kYes) return ran_any;
  }
}

// Runs one block: warp after warp (last to first when reversed), then the block barrier.
inline void run_block(Block& b, const char* kernel, bool reverse) {
  const size_t n = b.fibers.size(), warps = (n + 31) / 32;
  for (size_t i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.state = State::kRunnable;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = b.stacks[i].data();
    f.context.uc_stack.ss_size = b.stacks[i].size();
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  for (;;) {
    bool ran = false;
    for (size_t k = 0; k < warps; ++k) {
      const size_t w = reverse ? warps - 1 - k : k;
      ran |= run_warp(b, w * 32, std::min(n, w * 32 + 32), reverse);
    }
    if (ran) continue;
    if (std::all_of(b.fibers.begin(), b.fibers.end(), [](const Fiber& f) { return f.state == State::kDone; })) return;
    const Opened opened = open_barrier(b, 0, n, State::kAtBlockBarrier);
    if (opened == Opened::kYes) continue;
    const std::string where = std::string(kernel) + " (block " + std::to_string(blockIdx.x) + "," +
                              std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) + ")";
    TORCH_CHECK(opened != Opened::kDivergent, "CUDA emulator: threads of ", where,
                " wait at different __syncthreads() calls");
    TORCH_CHECK(false, "CUDA emulator: a barrier in ", where,
                " can never open: some threads wait where others never arrive");
  }
}

template <typename Kernel, typename Args>
struct Launch {
  Kernel kernel;
  const Args* args;
  static void run(void* self) {
    auto& l = *static_cast<Launch*>(self);
    Args copy = *l.args;  // every thread has its own copy of the parameters, as in CUDA
    std::apply(l.kernel, copy);
  }
};

inline void check_configuration(const char* kernel, dim3 grid, dim3 block, size_t shared) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= 1024 && block.z <= 64, "CUDA emulator: ", kernel,
              " launched with an invalid block (", block.x, ", ", block.y, ", ", block.z, ")");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.y <= 65535 && grid.z <= 65535, "CUDA emulator: ",
              kernel, " launched with an invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  TORCH_CHECK(shared <= 48 * 1024, "CUDA emulator: ", kernel, " asks for ", shared,
              " bytes of dynamic shared memory, over the 48 KiB a launch gets without opting in");
}

// kernel<<<grid, block, shared, stream>>>(args...), rewritten as
// launch(kernel name, grid, block, shared, stream, [](auto... a) { kernel(a...); }, args...).
template <typename Kernel, typename... Args>
void launch(const char* name, dim3 grid, dim3 block, size_t shared, c10::cuda::CUDAStream, Kernel kernel,
            Args... args) {
  check_configuration(name, grid, block, shared);
  const std::tuple<Args...> params(args...);
  Launch<Kernel, std::tuple<Args...>> l{kernel, &params};
  Block b;
  const size_t threads = size_t{block.x} * block.y * block.z;
  b.fibers.resize(threads);
  b.stacks.assign(threads, std::vector<char>(kStackBytes));
  b.exchange.resize(threads);
  b.body = &Launch<Kernel, std::tuple<Args...>>::run;
  b.body_arg = &l;
  for (unsigned z = 0, t = 0; z < block.z; ++z)
    for (unsigned y = 0; y < block.y; ++y)
      for (unsigned x = 0; x < block.x; ++x, ++t) b.fibers[t].index = uint3{x, y, z};
  Block* outer = g_block;
  g_block = &b;
  blockDim = block;
  gridDim = grid;
  const bool reverse = reverse_schedule();
  try {
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = uint3{x, y, z};
          // Poisoned: a kernel that reads shared memory nothing wrote computes NaN.
          b.dynamic_shared.assign(shared + 16, kPoisonByte);
          run_block(b, name, reverse);
        }
  } catch (...) {
    g_block = outer;
    throw;
  }
  g_block = outer;
}

template <typename T>
T* dynamic_shared() {
  auto address = reinterpret_cast<uintptr_t>(g_block->dynamic_shared.data());
  return reinterpret_cast<T*>((address + 15) / 16 * 16);
}

// at::empty with every byte set to kPoisonByte (NaN in floating types): an output element
// no kernel writes stays NaN and fails the comparison with the reference.
inline at::Tensor empty_poisoned(at::IntArrayRef sizes, at::TensorOptions options) {
  at::Tensor t = at::empty(sizes, options);
  if (t.numel() > 0) std::memset(t.data_ptr(), kPoisonByte, t.storage().nbytes());
  return t;
}

}  // namespace emu

// ------------------------------------------------------------ synchronization intrinsics
// A macro, so that each call site is known by its source line (a return address would
// not do: the compiler may duplicate a call when it specializes a loop).
#define __syncthreads() ::emu::wait_at(::emu::State::kAtBlockBarrier, __LINE__)

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles move at most 8 bytes");
  TORCH_CHECK(mask == 0xffffffffu && width == 32, "CUDA emulator: only full-warp shuffles are emulated");
  emu::Block& b = *emu::g_block;
  const unsigned me = emu::linear_thread(), lane = me % 32;
  std::memcpy(&b.exchange[me], &value, sizeof(T));
  emu::wait_at(emu::State::kAtWarpBarrier);  // every lane has published its value
  T result = value;
  if (lane + delta < 32 && me + delta < b.fibers.size()) std::memcpy(&result, &b.exchange[me + delta], sizeof(T));
  emu::wait_at(emu::State::kAtWarpBarrier);  // every lane has read before the next shuffle writes
  return result;
}

// ------------------------------------------------------------ registration
// TORCH_LIBRARY_IMPL(autoenc_fast, CUDA, m) { m.impl(name, fn); ... } becomes ops
// autoenc_fast_emu::name, their schemas inferred from the C++ functions.
namespace emu {
struct Registrar {
  torch::Library& library;
  template <typename Fn>
  void impl(const char* name, Fn&& fn) {
    library.def(name, std::forward<Fn>(fn));
  }
};
}  // namespace emu

#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, key, m)                                           \
  static void emu_register_kernels(::emu::Registrar& m);                        \
  TORCH_LIBRARY_FRAGMENT(autoenc_fast_emu, emu_library) {                       \
    ::emu::Registrar registrar{emu_library};                                    \
    emu_register_kernels(registrar);                                            \
  }                                                                             \
  static void emu_register_kernels(::emu::Registrar& m)
