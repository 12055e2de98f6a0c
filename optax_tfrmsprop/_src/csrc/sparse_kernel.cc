// XLA FFI handlers: TF's sparse momentum paths P7/P8 on the rows touched.
//
// tf_keras first de-duplicates an IndexedSlices gradient (summing the rows of
// each index), then ResourceSparseApply[Centered]RMSProp updates one row of
// the variable and of its slots per distinct index. These handlers do both,
// in place through XLA's input/output aliasing, so a step costs O(rows
// touched).
//
// EVERY EXPRESSION MIRRORS optax_tfrmsprop/_src/sparse.py::deduplicate (the
// order of the sums) and the momentum branch of
// optax_tfrmsprop/_src/update_rules.py::sparse_leaf ("tf_cpu" rounding): same
// operations, operand order and parenthesisation, which are those of the
// spec's sections 3 and 6. This file is compiled with -ffp-contract=off, so
// each operation rounds once. Change one, change both (docs/cpu_kernel.md).
//
// The one thing only this side can do is TF's float32 packet rsqrt: Eigen's
// AVX prsqrt, the hardware estimate vrsqrtps refined by one Newton step
// without FMA. jnp reaches the estimate only through jax.lax.rsqrt, whose
// Newton step uses FMA (an ULP off on ~15% of lanes).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TFRMSPROP_PACKET_RSQRT 1
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace tfrmsprop {
namespace {

// Eigen's float packets on the AVX build TF ships: the first
// kPacket * (width / kPacket) elements of a row take the packet rsqrt, the
// remaining width % kPacket take 1 / sqrt.
constexpr std::size_t kPacket = 8;
// A row is processed in chunks of this many elements (a multiple of kPacket,
// so packet lanes stay aligned to the row start) through stack buffers.
constexpr std::size_t kChunk = 512;
// Below this many elements in a call, waking the other threads costs more
// than it saves.
constexpr std::size_t kMinParallelElements = std::size_t{1} << 15;

#ifdef TFRMSPROP_PACKET_RSQRT
bool HasPacketRsqrt() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx");
}

// Eigen's prsqrt<Packet8f> (generic_rsqrt_newton_step, one step) with TF's
// non-FMA pmadd: y = ((r0 * -0.5) * (((x * r0) * r0) + -1)) + r0, and r0 where
// y is NaN (x = 0, +inf, negative, NaN; a subnormal x has r0 = +inf and gives
// +inf). Compiled for AVX without FMA, so nothing can be contracted.
__attribute__((target("avx"))) void PacketRsqrt(const float* x, float* y,
                                                std::size_t n) {
  const __m256 minus_half = _mm256_set1_ps(-0.5f);
  const __m256 minus_one = _mm256_set1_ps(-1.0f);
  for (std::size_t i = 0; i < n; i += kPacket) {
    const __m256 a = _mm256_loadu_ps(x + i);
    const __m256 r0 = _mm256_rsqrt_ps(a);
    const __m256 h =
        _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(a, r0), r0), minus_one);
    const __m256 r1 =
        _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(r0, minus_half), h), r0);
    const __m256 is_nan = _mm256_cmp_ps(r1, r1, _CMP_UNORD_Q);
    _mm256_storeu_ps(y + i, _mm256_blendv_ps(r1, r0, is_nan));
  }
}
#else
bool HasPacketRsqrt() { return false; }
void PacketRsqrt(const float*, float*, std::size_t) {}
#endif

// rsqrt of the elements [lo, lo + n) of a row whose packet lanes end at
// `packet_end`: Eigen's packet rsqrt there (float only), 1 / sqrt elsewhere
// (two roundings, Eigen's scalar rsqrt).
template <typename T>
void RowRsqrt(const T* x, T* y, std::size_t lo, std::size_t n,
              std::size_t packet_end) {
  std::size_t packets = 0;
  if constexpr (sizeof(T) == sizeof(float)) {
    packets = std::min(n, packet_end > lo ? packet_end - lo : 0);
    PacketRsqrt(x, y, packets);
  }
  for (std::size_t j = packets; j < n; ++j) y[j] = T(1) / std::sqrt(x[j]);
}

template <typename T>
struct Hypers {
  T lr, rho, c, mu, eps;
};

// The gradient of one distinct row: the input rows values[ks[0]], values[ks[1]],
// ... (ks ascending) summed from zero in input order, as tf_keras'
// unsorted_segment_sum does (and sparse.py::deduplicate on the jnp side).
template <typename T>
struct RowGradient {
  const T* values;
  const std::int64_t* ks;
  std::size_t count;
  std::size_t width;

  void Sum(std::size_t lo, std::size_t n, T* out) const {
    const T* first = values + ks[0] * width + lo;
    for (std::size_t j = 0; j < n; ++j) out[j] = T(0) + first[j];
    for (std::size_t i = 1; i < count; ++i) {
      const T* row = values + ks[i] * width + lo;
      for (std::size_t j = 0; j < n; ++j) out[j] = out[j] + row[j];
    }
  }
};

// One row of ResourceSparseApply[Centered]RMSProp (spec section 3, P7/P8).
// With kApply `out` is the variable row, updated in place; otherwise it is
// the row of the optax update, -mom.
template <typename T, bool kCentered, bool kApply>
void UpdateRow(const RowGradient<T>& grad, T* __restrict out,
               T* __restrict ms, T* __restrict mg, T* __restrict mom,
               const Hypers<T>& h) {
  const std::size_t width = grad.width;
  const std::size_t packet_end = kPacket * (width / kPacket);
  T g[kChunk], denom[kChunk], scale[kChunk];
  for (std::size_t lo = 0; lo < width; lo += kChunk) {
    const std::size_t n = std::min(kChunk, width - lo);
    grad.Sum(lo, n, g);
    for (std::size_t j = 0, i = lo; j < n; ++j, ++i) {
      const T ms_i = (ms[i] * h.rho) + ((g[j] * g[j]) * h.c);
      ms[i] = ms_i;
      T d = ms_i + h.eps;
      if constexpr (kCentered) {
        const T mg_i = (mg[i] * h.rho) + (g[j] * h.c);
        mg[i] = mg_i;
        d = d - (mg_i * mg_i);
      }
      denom[j] = d;
    }
    RowRsqrt(denom, scale, lo, n, packet_end);
    for (std::size_t j = 0, i = lo; j < n; ++j, ++i) {
      const T mom_i = (mom[i] * h.mu) + ((scale[j] * h.lr) * g[j]);
      mom[i] = mom_i;
      if constexpr (kApply) {
        out[i] = out[i] - mom_i;
      } else {
        out[i] = -mom_i;
      }
    }
  }
}

// tf_keras' de-duplication (tf.unique + unsorted_segment_sum), then the rows.
//
// `indices` are in [0, num_rows]; num_rows stands for every invalid index
// (sparse.py::_valid_rows) and changes nothing. The distinct indices, in
// order of first occurrence, get the slots 0..u-1 of the optax outputs
// (`update` rows and `unique` indices, as sparse.py::deduplicate orders
// them); slots u..n-1 are padding: index num_rows and update rows -0, what
// the jnp path gives them. The invalid group's update row is -0 too (the jnp
// path computes it from zero slots; it is dropped either way). Distinct rows
// are independent, so they run in parallel.
template <typename T, bool kCentered, bool kApply>
void RunRows(const T* values, const std::int32_t* indices, std::size_t n,
             std::int64_t num_rows, std::size_t width, T* out,
             std::int32_t* unique, T* ms, T* mg, T* mom, const Hypers<T>& h) {
  // ks sorted by (index, position): each group is a run, positions ascending.
  std::vector<std::int64_t> ks(n);
  for (std::size_t k = 0; k < n; ++k) ks[k] = static_cast<std::int64_t>(k);
  std::stable_sort(ks.begin(), ks.end(), [&](std::int64_t a, std::int64_t b) {
    return indices[a] < indices[b];
  });
  std::vector<std::size_t> starts;
  for (std::size_t s = 0; s < n; ++s) {
    if (s == 0 || indices[ks[s]] != indices[ks[s - 1]]) starts.push_back(s);
  }
  const std::size_t groups = starts.size();
  starts.push_back(n);
  // A group's slot is the rank of its first position among first positions.
  std::vector<char> is_first(n, 0);
  for (std::size_t g = 0; g < groups; ++g) is_first[ks[starts[g]]] = 1;
  std::vector<std::int64_t> slot_of_position(n);
  std::int64_t next = 0;
  for (std::size_t k = 0; k < n; ++k) {
    if (is_first[k]) slot_of_position[k] = next++;
  }
  if constexpr (!kApply) {
    std::fill_n(unique, n, static_cast<std::int32_t>(num_rows));
    std::fill_n(out, n * width, -T(0));
  }
  auto run = [&](std::size_t g) {
    const std::int64_t first = ks[starts[g]];
    const std::int64_t row = indices[first];
    const std::int64_t slot = slot_of_position[first];
    if constexpr (!kApply) unique[slot] = static_cast<std::int32_t>(row);
    if (row < 0 || row >= num_rows) return;
    const RowGradient<T> grad{values, ks.data() + starts[g],
                              starts[g + 1] - starts[g], width};
    const std::size_t at = static_cast<std::size_t>(row) * width;
    UpdateRow<T, kCentered, kApply>(
        grad, kApply ? out + at : out + slot * width, ms + at,
        kCentered ? mg + at : nullptr, mom + at, h);
  };
  if (n * width < kMinParallelElements) {
    for (std::size_t g = 0; g < groups; ++g) run(g);
    return;
  }
#pragma omp parallel for schedule(static)
  for (std::size_t g = 0; g < groups; ++g) run(g);
}

// Operands: hypers [lr, rho, 1 - rho, momentum, epsilon] in T, the clipped
// gradient rows (n, ...), their indices (n,) int32 in [0, num_rows] (with
// duplicates), then [var], ms, [mg], mom. Results: var (apply, aliased) or
// the update rows (n, ...) and their distinct indices (n,) int32, then ms,
// [mg], mom, aliased to their operands.
template <typename T, ffi::DataType kDtype>
ffi::Error SparseImpl(ffi::RemainingArgs args, ffi::RemainingRets rets,
                      bool centered, bool apply) {
  if constexpr (sizeof(T) == sizeof(float)) {
    if (!HasPacketRsqrt()) {
      return ffi::Error::InvalidArgument(
          "tfrmsprop: the float32 sparse kernel needs AVX (TF's packet "
          "rsqrt).");
    }
  }
  const std::size_t ins = 5 + apply + centered;
  const std::size_t outs = 3 + !apply + centered;
  if (args.size() != ins || rets.size() != outs) {
    return ffi::Error::InvalidArgument(
        "tfrmsprop: operand and result counts do not match the path.");
  }
  auto hypers = args.get<ffi::Buffer<kDtype>>(0);
  auto g = args.get<ffi::Buffer<kDtype>>(1);
  auto indices = args.get<ffi::Buffer<ffi::DataType::S32>>(2);
  auto ms_in = args.get<ffi::Buffer<kDtype>>(3 + apply);
  if (!hypers.has_value() || hypers->element_count() != 5 ||
      !g.has_value() || !indices.has_value() || !ms_in.has_value()) {
    return ffi::Error::InvalidArgument("tfrmsprop: bad sparse operands.");
  }
  auto out = [&](std::size_t i) -> T* {
    auto buf = rets.get<ffi::Buffer<kDtype>>(i);
    return buf.has_value() ? (*buf)->typed_data() : nullptr;
  };
  // The variable and slots are read through their results, which XLA aliases
  // to the operands (copying first if it cannot donate them).
  std::size_t r = 0;
  T* first = out(r++);
  std::int32_t* unique = nullptr;
  if (!apply) {
    auto buf = rets.get<ffi::Buffer<ffi::DataType::S32>>(r++);
    if (!buf.has_value()) {
      return ffi::Error::InvalidArgument("tfrmsprop: bad indices result.");
    }
    unique = (*buf)->typed_data();
  }
  T* ms = out(r++);
  T* mg = centered ? out(r++) : nullptr;
  T* mom = out(r++);
  const auto dims = ms_in->dimensions();
  const std::int64_t num_rows = dims.size() == 0 ? 1 : dims[0];
  const std::size_t width =
      num_rows == 0 ? 0 : ms_in->element_count() / num_rows;
  const std::size_t n = indices->element_count();
  if (g->element_count() != n * width) {
    return ffi::Error::InvalidArgument(
        "tfrmsprop: the gradient rows do not match the indices.");
  }
  const T* hp = hypers->typed_data();
  const Hypers<T> h{hp[0], hp[1], hp[2], hp[3], hp[4]};
  const T* gp = g->typed_data();
  const std::int32_t* ip = indices->typed_data();
#define TFRMSPROP_RUN(C, A)                                                   \
  if (centered == C && apply == A)                                            \
    return RunRows<T, C, A>(gp, ip, n, num_rows, width, first, unique, ms, mg, \
                            mom, h),                                          \
           ffi::Error::Success();
  TFRMSPROP_RUN(false, false)
  TFRMSPROP_RUN(false, true)
  TFRMSPROP_RUN(true, false)
  TFRMSPROP_RUN(true, true)
#undef TFRMSPROP_RUN
  return ffi::Error::Success();
}

}  // namespace
}  // namespace tfrmsprop

// Whether this CPU can run the float32 handler (x86-64 with AVX); elsewhere
// the package keeps float32 sparse leaves on the jnp path.
extern "C" int TfRmspropSparseF32Supported() {
  return tfrmsprop::HasPacketRsqrt() ? 1 : 0;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    TfRmspropSparseF32,
    (tfrmsprop::SparseImpl<float, ffi::DataType::F32>),
    ffi::Ffi::Bind()
        .RemainingArgs()
        .RemainingRets()
        .Attr<bool>("centered")
        .Attr<bool>("apply"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    TfRmspropSparseF64,
    (tfrmsprop::SparseImpl<double, ffi::DataType::F64>),
    ffi::Ffi::Bind()
        .RemainingArgs()
        .RemainingRets()
        .Attr<bool>("centered")
        .Attr<bool>("apply"));
