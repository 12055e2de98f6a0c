// The four dense RMSprop paths of TF's CPU kernels, one loop each.
//
// Included once per instruction set by dense_kernel.cc, with
// TFRMSPROP_ISA_NAMESPACE and TFRMSPROP_ISA_TARGET defined, so the same source
// is compiled for AVX-512, AVX2 and the baseline and picked at run time.
//
// EVERY EXPRESSION MIRRORS optax_tfrmsprop/_src/update_rules.py::dense_leaf
// ("tf_cpu" rounding) LINE BY LINE: same operations, same operand order, same
// parenthesisation. The file is compiled with -ffp-contract=off, so each
// operation rounds once to T (bfloat16 through BFloat16Arith, bfloat16.h), as
// in TF's Eigen kernels and as `rounded` enforces on the XLA side. Change one, change both (docs/cpu_kernel.md).

#include <cstddef>

#include "bfloat16.h"
#include "tfrmsprop.h"

namespace tfrmsprop {
namespace TFRMSPROP_ISA_NAMESPACE {

// Updates elements [lo, hi) of one leaf. With kApply, `out` holds the
// variable and is updated in place; without it `out` is unused: P1/P2 update
// only their slots (JAX computes the optax update from the new slots, in the
// loop that applies it) and P3/P4's optax update is -mom, negated in JAX.
template <typename T, bool kCentered, bool kMomentum, bool kApply>
TFRMSPROP_ISA_TARGET void DenseRange(
    const T* __restrict g, T* __restrict out,
    T* __restrict ms, T* __restrict mg, T* __restrict mom, std::size_t lo,
    std::size_t hi, const Hypers<Compute<T>>& h) {
  using A = Compute<T>;  // T's arithmetic (bfloat16.h)
  // The names of update_rules.dense_leaf.
  const A lr = h.lr, rho = h.rho, c = h.one_minus_rho, mu = h.momentum,
          eps = h.epsilon;
#pragma GCC ivdep
  for (std::size_t i = lo; i < hi; ++i) {
    const A gi = ToCompute(g[i]);
    if constexpr (!kMomentum) {
      // P1/P2: tf_keras' graph ops, epsilon outside the square root.
      const A ms_i = (rho * ToCompute(ms[i])) + (c * (gi * gi));
      ms[i] = ToStorage(ms_i);
      A denom = ms_i;
      if constexpr (kCentered) {
        const A mg_i = (rho * ToCompute(mg[i])) + (c * gi);
        mg[i] = ToStorage(mg_i);
        denom = ms_i - (mg_i * mg_i);
      }
      if constexpr (kApply) {
        const A step = (lr * gi) / (Sqrt(denom) + eps);
        out[i] = ToStorage(ToCompute(out[i]) - step);
      }
    } else {
      // P3/P4: ResourceApply[Centered]RMSProp's Eigen functors, incremental
      // EMA form, epsilon inside the square root.
      const A ms_old = ToCompute(ms[i]);
      const A ms_i = ms_old + (((gi * gi) - ms_old) * c);
      ms[i] = ToStorage(ms_i);
      A denom = ms_i + eps;
      if constexpr (kCentered) {
        const A mg_old = ToCompute(mg[i]);
        const A mg_i = mg_old + ((gi - mg_old) * c);
        mg[i] = ToStorage(mg_i);
        denom = (ms_i - (mg_i * mg_i)) + eps;
      }
      const A mom_i = (ToCompute(mom[i]) * mu) + ((gi * lr) / Sqrt(denom));
      mom[i] = ToStorage(mom_i);
      if constexpr (kApply) {
        out[i] = ToStorage(ToCompute(out[i]) - mom_i);
      }
    }
  }
}

}  // namespace TFRMSPROP_ISA_NAMESPACE
}  // namespace tfrmsprop
