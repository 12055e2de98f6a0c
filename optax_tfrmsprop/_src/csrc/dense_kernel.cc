// XLA FFI handlers: TF-exact RMSprop over every leaf of one dtype in one pass.
//
// One custom call updates all float32 (or float64) leaves of a step: each
// element of gradient, variable and slots is read once and written once, the
// slots (and the variable, in apply mode) in place through XLA's
// input/output aliasing. The work is split evenly over the OpenMP threads
// across leaf boundaries, so a tree of many small leaves still uses every
// core. The arithmetic lives in dense_loops.h.

#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define TFRMSPROP_ISA_NAMESPACE avx512
#define TFRMSPROP_ISA_TARGET __attribute__((target("avx512f,avx512vl,avx2")))
#include "dense_loops.h"
#undef TFRMSPROP_ISA_NAMESPACE
#undef TFRMSPROP_ISA_TARGET
#define TFRMSPROP_ISA_NAMESPACE avx2
#define TFRMSPROP_ISA_TARGET __attribute__((target("avx2")))
#include "dense_loops.h"
#undef TFRMSPROP_ISA_NAMESPACE
#undef TFRMSPROP_ISA_TARGET
#endif
#define TFRMSPROP_ISA_NAMESPACE baseline
#define TFRMSPROP_ISA_TARGET
#include "dense_loops.h"
#undef TFRMSPROP_ISA_NAMESPACE
#undef TFRMSPROP_ISA_TARGET

namespace ffi = xla::ffi;

namespace tfrmsprop {
namespace {

// Below this many elements in a call, waking the other threads costs more
// than it saves.
constexpr std::size_t kMinParallelElements = std::size_t{1} << 15;
// Thread ranges start on 64-byte boundaries (16 floats, 8 doubles), so no two
// threads write the same cache line.
constexpr std::size_t kAlignBytes = 64;

template <typename T>
struct Leaf {
  const T* g;
  T* out;
  T* ms;
  T* mg;
  T* mom;
  std::size_t size;
};

enum class Isa { kBaseline, kAvx2, kAvx512 };

Isa DetectIsa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

// TFRMSPROP_FORCE_BASELINE (any value) selects the portable loop, to measure
// what the run-time dispatch buys.
Isa ChosenIsa() {
  static const Isa isa =
      std::getenv("TFRMSPROP_FORCE_BASELINE") ? Isa::kBaseline : DetectIsa();
  return isa;
}

template <typename T, bool kCentered, bool kMomentum, bool kApply>
void RunRange(const Leaf<T>& l, std::size_t lo, std::size_t hi,
              const T* hypers) {
  const T lr = hypers[0], rho = hypers[1], c = hypers[2], mu = hypers[3],
          eps = hypers[4];
  switch (ChosenIsa()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Isa::kAvx512:
      return avx512::DenseRange<T, kCentered, kMomentum, kApply>(
          l.g, l.out, l.ms, l.mg, l.mom, lo, hi, lr, rho, c, mu, eps);
    case Isa::kAvx2:
      return avx2::DenseRange<T, kCentered, kMomentum, kApply>(
          l.g, l.out, l.ms, l.mg, l.mom, lo, hi, lr, rho, c, mu, eps);
#endif
    default:
      return baseline::DenseRange<T, kCentered, kMomentum, kApply>(
          l.g, l.out, l.ms, l.mg, l.mom, lo, hi, lr, rho, c, mu, eps);
  }
}

// Gives thread `t` of `n` the elements [lo, hi) of the leaves laid end to end,
// cut at aligned offsets, and runs them.
template <typename T, bool kCentered, bool kMomentum, bool kApply>
void RunShare(const std::vector<Leaf<T>>& leaves, std::size_t total, int t,
              int n, const T* hypers) {
  constexpr std::size_t kAlign = kAlignBytes / sizeof(T);
  auto cut = [&](int k) {
    std::size_t at = total / n * k + std::min<std::size_t>(k, total % n);
    return k == n ? total : at / kAlign * kAlign;
  };
  const std::size_t lo = cut(t), hi = cut(t + 1);
  std::size_t start = 0;
  for (const Leaf<T>& leaf : leaves) {
    const std::size_t end = start + leaf.size;
    if (end > lo && start < hi) {
      RunRange<T, kCentered, kMomentum, kApply>(
          leaf, std::max(lo, start) - start, std::min(hi, end) - start,
          hypers);
    }
    if (end >= hi) break;
    start = end;
  }
}

template <typename T, bool kCentered, bool kMomentum, bool kApply>
void RunAll(const std::vector<Leaf<T>>& leaves, const T* hypers) {
  std::size_t total = 0;
  for (const Leaf<T>& leaf : leaves) total += leaf.size;
  const int threads =
      total < kMinParallelElements ? 1 : omp_get_max_threads();
  if (threads == 1) {
    RunShare<T, kCentered, kMomentum, kApply>(leaves, total, 0, 1, hypers);
    return;
  }
#pragma omp parallel num_threads(threads)
  RunShare<T, kCentered, kMomentum, kApply>(
      leaves, total, omp_get_thread_num(), omp_get_num_threads(), hypers);
}

// Operands: hypers [lr, rho, 1 - rho, momentum, epsilon] in T, then per leaf
// g, [var], ms, [mg], [mom]. Results per leaf: [var], ms, [mg], [mom]. The
// momentum-free paths (P1/P2) run only with apply.
template <typename T, ffi::DataType kDtype>
ffi::Error DenseImpl(ffi::RemainingArgs args, ffi::RemainingRets rets,
                     bool centered, bool momentum, bool apply) {
  const std::size_t ins = 2 + apply + centered + momentum;
  const std::size_t outs = 1 + apply + centered + momentum;
  if (!apply && !momentum) {
    return ffi::Error::InvalidArgument(
        "tfrmsprop: the momentum-free paths run only with apply=true.");
  }
  if (args.size() < 1 || (args.size() - 1) % ins != 0 ||
      rets.size() != (args.size() - 1) / ins * outs) {
    return ffi::Error::InvalidArgument(
        "tfrmsprop: operand and result counts do not match the path.");
  }
  auto hypers = args.get<ffi::Buffer<kDtype>>(0);
  if (!hypers.has_value() || hypers->element_count() != 5) {
    return ffi::Error::InvalidArgument(
        "tfrmsprop: the first operand must hold the 5 hyperparameters.");
  }
  const std::size_t n_leaves = (args.size() - 1) / ins;
  std::vector<Leaf<T>> leaves(n_leaves);
  for (std::size_t k = 0; k < n_leaves; ++k) {
    std::size_t a = 1 + k * ins, r = k * outs;
    auto in = [&](std::size_t i) -> ffi::ErrorOr<ffi::Buffer<kDtype>> {
      return args.get<ffi::Buffer<kDtype>>(i);
    };
    auto out = [&](std::size_t i) -> T* {
      auto buf = rets.get<ffi::Buffer<kDtype>>(i);
      return buf.has_value() ? (*buf)->typed_data() : nullptr;
    };
    auto g = in(a++);
    if (!g.has_value()) {
      return ffi::Error::InvalidArgument("tfrmsprop: bad gradient operand.");
    }
    Leaf<T>& leaf = leaves[k];
    leaf.size = g->element_count();
    leaf.g = g->typed_data();
    // The variable and slots are read through their results, which XLA
    // aliases to the operands (copying first if it cannot donate them).
    if (apply) a++;
    leaf.out = apply ? out(r++) : nullptr;
    a++;
    leaf.ms = out(r++);
    if (centered) a++, leaf.mg = out(r++);
    if (momentum) a++, leaf.mom = out(r++);
  }
  const T* h = hypers->typed_data();
#define TFRMSPROP_RUN(C, M, A) \
  if (centered == C && momentum == M && apply == A) \
    return RunAll<T, C, M, A>(leaves, h), ffi::Error::Success();
  TFRMSPROP_RUN(false, false, true)
  TFRMSPROP_RUN(true, false, true)
  TFRMSPROP_RUN(false, true, false)
  TFRMSPROP_RUN(false, true, true)
  TFRMSPROP_RUN(true, true, false)
  TFRMSPROP_RUN(true, true, true)
#undef TFRMSPROP_RUN
  return ffi::Error::Success();
}

}  // namespace
}  // namespace tfrmsprop

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    TfRmspropDenseF32,
    (tfrmsprop::DenseImpl<float, ffi::DataType::F32>),
    ffi::Ffi::Bind()
        .RemainingArgs()
        .RemainingRets()
        .Attr<bool>("centered")
        .Attr<bool>("momentum")
        .Attr<bool>("apply"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    TfRmspropDenseF64,
    (tfrmsprop::DenseImpl<double, ffi::DataType::F64>),
    ffi::Ffi::Bind()
        .RemainingArgs()
        .RemainingRets()
        .Attr<bool>("centered")
        .Attr<bool>("momentum")
        .Attr<bool>("apply"));
