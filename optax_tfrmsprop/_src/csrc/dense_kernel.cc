// The XLA FFI handler tfrmsprop_dense: TF-exact RMSprop over every leaf of
// one dtype in one pass.
//
// One custom call updates all float32 (or float64, or bfloat16: the element
// type of the hyperparameters picks the loops) leaves of a step: each element of
// gradient, variable and slots is read once and written once, the slots (and
// the variable, in apply mode) in place through XLA's input/output aliasing.
// The elements of all leaves, laid end to end, are cut into blocks that run on
// XLA's intra-op thread pool (parallel.h), across leaf boundaries, so a tree
// of many small leaves still uses every core. The operand layout and
// the hyperparameter record are in tfrmsprop.h; the arithmetic, which mirrors
// update_rules.dense_leaf ("tf_cpu") line by line, in dense_loops.h. Every
// operand is checked before anything is read or written.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel.h"
#include "tfrmsprop.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define TFRMSPROP_ISA_NAMESPACE avx512
#define TFRMSPROP_ISA_TARGET \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx2")))
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
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw")) {  // bw: 16-bit lanes (bfloat16)
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
              const Hypers<Compute<T>>& h) {
  switch (ChosenIsa()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Isa::kAvx512:
      return avx512::DenseRange<T, kCentered, kMomentum, kApply>(
          l.g, l.out, l.ms, l.mg, l.mom, lo, hi, h);
    case Isa::kAvx2:
      return avx2::DenseRange<T, kCentered, kMomentum, kApply>(
          l.g, l.out, l.ms, l.mg, l.mom, lo, hi, h);
#endif
    default:
      return baseline::DenseRange<T, kCentered, kMomentum, kApply>(
          l.g, l.out, l.ms, l.mg, l.mom, lo, hi, h);
  }
}

// Runs the elements [lo, hi) of the leaves laid end to end; `ends[k]` is
// where leaf k ends.
template <typename T, bool kCentered, bool kMomentum, bool kApply>
void RunSpan(const std::vector<Leaf<T>>& leaves,
             const std::vector<std::size_t>& ends, std::size_t lo,
             std::size_t hi, const Hypers<Compute<T>>& h) {
  std::size_t k = std::upper_bound(ends.begin(), ends.end(), lo) - ends.begin();
  for (; k < leaves.size(); ++k) {
    const std::size_t start = ends[k] - leaves[k].size;
    if (start >= hi) break;
    RunRange<T, kCentered, kMomentum, kApply>(
        leaves[k], std::max(lo, start) - start, std::min(hi, ends[k]) - start,
        h);
  }
}

template <typename T, bool kCentered, bool kMomentum, bool kApply>
void RunAll(ffi::ThreadPool& pool, const std::vector<Leaf<T>>& leaves,
            const Hypers<Compute<T>>& h) {
  std::vector<std::size_t> ends(leaves.size());
  std::size_t total = 0;
  for (std::size_t k = 0; k < leaves.size(); ++k) {
    total += leaves[k].size;
    ends[k] = total;
  }
  if (total < kMinParallelElements) {
    RunSpan<T, kCentered, kMomentum, kApply>(leaves, ends, 0, total, h);
    return;
  }
  constexpr std::size_t kBlock = kBlockBytes / sizeof(T);
  ParallelFor(pool, (total + kBlock - 1) / kBlock, [&](std::size_t b) {
    RunSpan<T, kCentered, kMomentum, kApply>(
        leaves, ends, b * kBlock, std::min(total, (b + 1) * kBlock), h);
  });
}

// Checks every operand and result of the layout (tfrmsprop.h) and collects
// the leaves' pointers; nothing is read or written yet.
template <typename T>
ffi::Error CollectLeaves(const DenseLayout& layout, ffi::DataType type,
                         const ffi::RemainingArgs& args,
                         const ffi::RemainingRets& rets,
                         std::vector<Leaf<T>>& leaves) {
  const std::size_t ins = layout.Operands(), outs = layout.Results();
  if (args.size() % ins != 0 || rets.size() != args.size() / ins * outs) {
    return Invalid("the dense call has ", args.size(), " leaf operands and ",
                   rets.size(), " results; this path takes ", ins,
                   " operands and ", outs, " results per leaf.");
  }
  // The roles of a leaf's results r = 0, 1, ..., which alias operands r + 1.
  const char* roles[4];
  std::size_t n_roles = 0;
  if (layout.apply) roles[n_roles++] = "var";
  roles[n_roles++] = "ms";
  if (layout.centered) roles[n_roles++] = "mg";
  if (layout.momentum) roles[n_roles++] = "mom";
  leaves.resize(args.size() / ins);
  for (std::size_t k = 0; k < leaves.size(); ++k) {
    const auto leaf_k = static_cast<std::int64_t>(k);
    auto g = args.get<ffi::AnyBuffer>(k * ins);
    if (!g.has_value()) return g.error();
    const auto dims = g->dimensions();
    TFRMSPROP_RETURN_IF_ERROR(
        CheckBuffer(*g, {"g", "operand", leaf_k}, type, dims));
    T* slots[4] = {nullptr, nullptr, nullptr, nullptr};
    for (std::size_t r = 0; r < outs; ++r) {
      auto in = args.get<ffi::AnyBuffer>(k * ins + 1 + r);
      if (!in.has_value()) return in.error();
      auto out = rets.get<ffi::AnyBuffer>(k * outs + r);
      if (!out.has_value()) return out.error();
      const Where operand{roles[r], "operand", leaf_k};
      const Where result{roles[r], "result", leaf_k};
      TFRMSPROP_RETURN_IF_ERROR(CheckBuffer(*in, operand, type, dims));
      TFRMSPROP_RETURN_IF_ERROR(CheckBuffer(**out, result, type, dims));
      TFRMSPROP_RETURN_IF_ERROR(CheckAliased(**out, *in, result));
      slots[r] = (*out)->typed_data<T>();
    }
    // The variable and slots are read through their results, which XLA
    // aliases to the operands (copying first if it cannot donate them).
    Leaf<T>& leaf = leaves[k];
    std::size_t r = 0;
    leaf.g = g->typed_data<T>();
    leaf.size = g->element_count();
    leaf.out = layout.apply ? slots[r++] : nullptr;
    leaf.ms = slots[r++];
    leaf.mg = layout.centered ? slots[r++] : nullptr;
    leaf.mom = layout.momentum ? slots[r++] : nullptr;
  }
  return ffi::Error::Success();
}

ffi::Error Dense(ffi::AnyBuffer hypers, ffi::RemainingArgs args,
                 ffi::RemainingRets rets, bool centered, bool momentum,
                 bool apply, ffi::ThreadPool pool) {
  const DenseLayout layout{centered, momentum, apply};
  TFRMSPROP_RETURN_IF_ERROR(CheckHypers(hypers));
  return DispatchFloat</*kBFloat16=*/true>(hypers.element_type(), [&](auto zero) {
    using T = decltype(zero);
    std::vector<Leaf<T>> leaves;
    TFRMSPROP_RETURN_IF_ERROR(
        CollectLeaves(layout, hypers.element_type(), args, rets, leaves));
    const Hypers<Compute<T>> h = ReadHypers<T>(hypers);
    return DispatchFlags(
        [&](auto kCentered, auto kMomentum, auto kApply) {
          RunAll<T, kCentered, kMomentum, kApply>(pool, leaves, h);
          return ffi::Error::Success();
        },
        centered, momentum, apply);
  });
}

}  // namespace
}  // namespace tfrmsprop

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    TfRmspropDense, tfrmsprop::Dense,
    ffi::Ffi::Bind()
        // [lr, rho, 1 - rho, momentum, epsilon] in the leaves' dtype, float32,
        // float64 or bfloat16 (tfrmsprop.h::HyperIndex); its dtype picks the
        // loops.
        .Arg<ffi::AnyBuffer>()
        // Per leaf: g, [var], ms, [mg], [mom] (tfrmsprop.h::DenseLayout).
        .RemainingArgs()
        // Per leaf: [var], ms, [mg], [mom], each aliased to its operand.
        .RemainingRets()
        // The mg slot is present (TF's centered=True: P2/P4).
        .Attr<bool>("centered")
        // The mom slot is present (TF's kernel paths P3/P4).
        .Attr<bool>("momentum")
        // Update var in place; without it P1/P2 update only their slots
        // and P3/P4's optax update is -mom, negated in JAX.
        .Attr<bool>("apply")
        // XLA's intra-op thread pool, which runs the loop (parallel.h).
        .Ctx<ffi::ThreadPool>());

// The constants of tfrmsprop.h, for cpu_kernel.py to check against its own.
extern "C" int TfRmspropEigenPacketBytes() {
  return static_cast<int>(tfrmsprop::kEigenPacketBytes);
}
extern "C" int TfRmspropNumHypers() {
  return static_cast<int>(tfrmsprop::kNumHypers);
}
