// The four dense RMSprop paths of TF's CPU kernels, one loop each.
//
// Included once per instruction set by dense_kernel.cc, with
// TFRMSPROP_ISA_NAMESPACE and TFRMSPROP_ISA_TARGET defined, so the same source
// is compiled for AVX-512, AVX2 and the baseline and picked at run time.
//
// EVERY EXPRESSION MIRRORS optax_tfrmsprop/_src/update_rules.py::dense_leaf
// ("tf_cpu" rounding) LINE BY LINE: same operations, same operand order, same
// parenthesisation. The file is compiled with -ffp-contract=off, so each
// operation rounds once to T, as in TF's Eigen kernels and as `rounded`
// enforces on the XLA side. Change one, change both (docs/cpu_kernel.md).

#include <cmath>
#include <cstddef>

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
    std::size_t hi, const Hypers<T>& h) {
  // The names of update_rules.dense_leaf.
  const T lr = h.lr, rho = h.rho, c = h.one_minus_rho, mu = h.momentum,
          eps = h.epsilon;
#pragma GCC ivdep
  for (std::size_t i = lo; i < hi; ++i) {
    const T gi = g[i];
    if constexpr (!kMomentum) {
      // P1/P2: tf_keras' graph ops, epsilon outside the square root.
      const T ms_i = (rho * ms[i]) + (c * (gi * gi));
      ms[i] = ms_i;
      T denom = ms_i;
      if constexpr (kCentered) {
        const T mg_i = (rho * mg[i]) + (c * gi);
        mg[i] = mg_i;
        denom = ms_i - (mg_i * mg_i);
      }
      if constexpr (kApply) {
        const T step = (lr * gi) / (std::sqrt(denom) + eps);
        out[i] = out[i] - step;
      }
    } else {
      // P3/P4: ResourceApply[Centered]RMSProp's Eigen functors, incremental
      // EMA form, epsilon inside the square root.
      const T ms_i = ms[i] + (((gi * gi) - ms[i]) * c);
      ms[i] = ms_i;
      T denom = ms_i + eps;
      if constexpr (kCentered) {
        const T mg_i = mg[i] + ((gi - mg[i]) * c);
        mg[i] = mg_i;
        denom = (ms_i - (mg_i * mg_i)) + eps;
      }
      const T mom_i = (mom[i] * mu) + ((gi * lr) / std::sqrt(denom));
      mom[i] = mom_i;
      if constexpr (kApply) {
        out[i] = out[i] - mom_i;
      }
    }
  }
}

}  // namespace TFRMSPROP_ISA_NAMESPACE
}  // namespace tfrmsprop
