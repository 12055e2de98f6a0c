// Parallel loops of the FFI handlers, on XLA's own intra-op thread pool.
//
// XLA:CPU hands every FFI handler its intra-op thread pool (the Eigen pool
// that runs XLA's own parallel loops; ffi::ThreadPool, bound with
// .Ctx<ffi::ThreadPool>()). Running the kernels' loops there, instead of on
// a second pool of OpenMP threads, keeps one set of worker threads per
// process, sized and scheduled by XLA. The loop is split into many small
// blocks that the calling thread and the pool's workers claim one at a time,
// so a worker that the OS deschedules (another process busy on the same
// core) holds up at most the one block it has claimed: the other threads take
// the rest. Nothing waits on a worker that has not started: the calling
// thread runs every block nobody else has claimed, then sleeps (no spinning)
// until the blocks others claimed are done.
//
// The pool's contract (xla/ffi/api/c_api.h) allows tasks to run late, on the
// caller, or not in parallel at all; this loop is correct under each. The
// split only decides who computes which elements, never how an element is
// computed, so results are bitwise the same for any number of threads.

#ifndef OPTAX_TFRMSPROP_CSRC_PARALLEL_H_
#define OPTAX_TFRMSPROP_CSRC_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace tfrmsprop {

// Bytes of the gradient in one block of a parallel loop: small enough that a
// descheduled thread holds up little work (about 10 us of a memory-bound
// loop), large enough that claiming a block costs nothing measurable.
inline constexpr std::size_t kBlockBytes = std::size_t{1} << 16;

namespace internal {

// What the calling thread and its helpers share. Owned jointly (a helper
// task may start after the loop has returned; it then finds no block left
// and touches nothing else).
struct LoopState {
  std::size_t blocks = 0;
  std::atomic<std::size_t> next{0};  // The next unclaimed block.
  std::atomic<std::size_t> done{0};  // Blocks finished.
  // The loop body, type-erased: run(body, b). Read only by a thread that has
  // claimed a block, so only while the calling thread still waits.
  void (*run)(const void*, std::size_t) = nullptr;
  const void* body = nullptr;
  std::mutex mutex;
  std::condition_variable finished;

  // Claims and runs blocks until none is left.
  void Work() {
    for (std::size_t b = next.fetch_add(1, std::memory_order_relaxed);
         b < blocks; b = next.fetch_add(1, std::memory_order_relaxed)) {
      run(body, b);
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == blocks) {
        std::lock_guard<std::mutex> lock(mutex);
        finished.notify_all();
      }
    }
  }
};

}  // namespace internal

// Calls body(b) once for each b in [0, blocks), on the calling thread and on
// up to pool.num_threads() - 1 of the pool's workers, and returns when every
// call has returned. With no pool (zero threads) or one block, it is a plain
// loop on the calling thread.
template <typename Body>
void ParallelFor(xla::ffi::ThreadPool& pool, std::size_t blocks,
                 const Body& body) {
  const std::int64_t threads = blocks > 1 ? pool.num_threads() : 0;
  const std::size_t helpers =
      threads > 1 ? std::min<std::size_t>(threads - 1, blocks - 1) : 0;
  if (helpers == 0) {
    for (std::size_t b = 0; b < blocks; ++b) body(b);
    return;
  }
  auto state = std::make_shared<internal::LoopState>();
  state->blocks = blocks;
  state->body = &body;
  state->run = [](const void* f, std::size_t b) {
    (*static_cast<const Body*>(f))(b);
  };
  for (std::size_t i = 0; i < helpers; ++i) {
    pool.Schedule([state] { state->Work(); });
  }
  state->Work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->finished.wait(lock, [&] {
    return state->done.load(std::memory_order_acquire) == blocks;
  });
}

}  // namespace tfrmsprop

#endif  // OPTAX_TFRMSPROP_CSRC_PARALLEL_H_
