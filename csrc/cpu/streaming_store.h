// Streaming (non-temporal) stores for the CPU kernels' large outputs.
//
// An output much bigger than a core's cache is not read back soon by the kernel that
// writes it, and a normal store first reads every line it writes (read for ownership):
// streaming stores skip that read. They are weakly ordered, so a parallel task that
// used them ends with end_of_streaming_task() (sfence) before others may read its output.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace autoenc_fast {

// Outputs bigger than this are worth streaming.
constexpr int64_t kStreamOutputBytes = 4 << 20;

inline bool stream_output(int64_t numel, int64_t element_size) { return numel * element_size > kStreamOutputBytes; }

// v into p[0 .. count): a streaming store where asked and the address is 32-byte aligned.
template <typename T>
inline void store_out(const at::vec::Vectorized<T>& v, T* p, int64_t count, bool stream) {
#if defined(CPU_CAPABILITY_AVX2)
  if (stream && count == at::vec::Vectorized<T>::size() && (reinterpret_cast<uintptr_t>(p) & 31) == 0) {
    if constexpr (std::is_same_v<T, float>) {
      _mm256_stream_ps(p, v);
      return;
    } else if constexpr (std::is_same_v<T, double>) {
      _mm256_stream_pd(p, v);
      return;
    }
  }
#endif
  v.store(p, count);
}

inline void end_of_streaming_task() {
#if defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

}  // namespace autoenc_fast
