// The XLA FFI handler tfrmsprop_sparse: TF's sparse momentum paths P7/P8 on
// the rows touched.
//
// tf_keras first de-duplicates an IndexedSlices gradient (summing the rows of
// each index), then ResourceSparseApply[Centered]RMSProp updates one row of
// the variable and of its slots per distinct index. This handler does both,
// in place through XLA's input/output aliasing, so a step costs O(rows
// touched). The element type of the hyperparameters (float32 or float64)
// picks the loops; every operand, and every index against the table, is
// checked before anything is read or written.
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
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TFRMSPROP_PACKET_RSQRT 1
#endif

#include "xla/ffi/api/ffi.h"
#include "parallel.h"
#include "tfrmsprop.h"

namespace ffi = xla::ffi;

namespace tfrmsprop {

// Row indices, and the distinct indices of the update rows.
using Indices = ffi::Buffer<ffi::S32, 1>;

namespace {

// Eigen's float packets on the AVX build TF ships: the first
// kPacket * (width / kPacket) elements of a row take the packet rsqrt, the
// remaining width % kPacket take 1 / sqrt.
constexpr std::size_t kPacket = kFloatPacket;
// A row is processed in chunks of this many elements (a multiple of kPacket,
// so packet lanes stay aligned to the row start) through stack buffers.
constexpr std::size_t kChunk = 512;
static_assert(kChunk % kPacket == 0);

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

// The gradient of one distinct row: the input rows values[ks[0]],
// values[ks[1]], ... (ks ascending) summed from zero in input order, as
// tf_keras' unsorted_segment_sum does (and sparse.py::deduplicate on the jnp
// side).
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
  // The names of update_rules.sparse_leaf.
  const T lr = h.lr, rho = h.rho, c = h.one_minus_rho, mu = h.momentum,
          eps = h.epsilon;
  const std::size_t width = grad.width;
  const std::size_t packet_end = kPacket * (width / kPacket);
  T g[kChunk], denom[kChunk], scale[kChunk];
  for (std::size_t lo = 0; lo < width; lo += kChunk) {
    const std::size_t n = std::min(kChunk, width - lo);
    grad.Sum(lo, n, g);
    for (std::size_t j = 0, i = lo; j < n; ++j, ++i) {
      const T ms_i = (ms[i] * rho) + ((g[j] * g[j]) * c);
      ms[i] = ms_i;
      T d = ms_i + eps;
      if constexpr (kCentered) {
        const T mg_i = (mg[i] * rho) + (g[j] * c);
        mg[i] = mg_i;
        d = d - (mg_i * mg_i);
      }
      denom[j] = d;
    }
    RowRsqrt(denom, scale, lo, n, packet_end);
    for (std::size_t j = 0, i = lo; j < n; ++j, ++i) {
      const T mom_i = (mom[i] * mu) + ((scale[j] * lr) * g[j]);
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
// `indices` are in [0, num_rows] (checked by the caller); num_rows stands for
// every invalid index (sparse.py::valid_rows) and changes nothing. The
// distinct indices, in order of first occurrence, get the slots 0..u-1 of the
// optax outputs (`update` rows and `unique` indices, as sparse.py::deduplicate
// orders them); slots u..n-1 are padding: index num_rows and update rows -0,
// what the jnp path gives them. The invalid group's update row is -0 too (the
// jnp path computes it from zero slots; it is dropped either way). Distinct
// rows are independent, so they run in parallel (parallel.h).
template <typename T, bool kCentered, bool kApply>
void RunRows(ffi::ThreadPool& pool, const T* values,
             const std::int32_t* indices, std::size_t n,
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
    if (row == num_rows) return;  // The invalid group.
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
  // Blocks of whole groups, about kBlockBytes of table rows each.
  const std::size_t per_block =
      std::max<std::size_t>(1, kBlockBytes / sizeof(T) / width);
  ParallelFor(pool, (groups + per_block - 1) / per_block, [&](std::size_t b) {
    const std::size_t end = std::min(groups, (b + 1) * per_block);
    for (std::size_t g = b * per_block; g < end; ++g) run(g);
  });
}

// Checks every operand and result (see the binding below) and every index
// against the table; nothing is read or written before this returns success.
ffi::Error CheckSparse(ffi::DataType type, ffi::AnyBuffer values,
                       Indices indices, ffi::AnyBuffer var,
                       ffi::AnyBuffer ms, ffi::AnyBuffer mg,
                       ffi::AnyBuffer mom, ffi::AnyBuffer first,
                       Indices unique, ffi::AnyBuffer ms_out,
                       ffi::AnyBuffer mg_out, ffi::AnyBuffer mom_out,
                       bool centered, bool apply) {
  const auto table = ms.dimensions();
  if (table.size() == 0) {
    return Invalid("the sparse slots must have rows (rank >= 1), got ms of "
                   "shape ", table, ".");
  }
  const std::int64_t num_rows = table[0];
  if (num_rows >= std::numeric_limits<std::int32_t>::max()) {
    return Invalid("the table has ", num_rows, " rows; the sparse kernel "
                   "takes int32 indices, so fewer than 2**31 - 1.");
  }
  TFRMSPROP_RETURN_IF_ERROR(CheckBuffer(ms, {"ms", "operand"}, type, table));
  TFRMSPROP_RETURN_IF_ERROR(CheckBuffer(mom, {"mom", "operand"}, type, table));
  TFRMSPROP_RETURN_IF_ERROR(CheckBuffer(ms_out, {"ms", "result"}, type, table));
  TFRMSPROP_RETURN_IF_ERROR(
      CheckBuffer(mom_out, {"mom", "result"}, type, table));
  TFRMSPROP_RETURN_IF_ERROR(CheckAliased(ms_out, ms, {"ms", "result"}));
  TFRMSPROP_RETURN_IF_ERROR(CheckAliased(mom_out, mom, {"mom", "result"}));
  if (centered) {
    TFRMSPROP_RETURN_IF_ERROR(CheckBuffer(mg, {"mg", "operand"}, type, table));
    TFRMSPROP_RETURN_IF_ERROR(
        CheckBuffer(mg_out, {"mg", "result"}, type, table));
    TFRMSPROP_RETURN_IF_ERROR(CheckAliased(mg_out, mg, {"mg", "result"}));
  } else {
    TFRMSPROP_RETURN_IF_ERROR(CheckEmpty(mg, {"mg operand (not centered)"}));
    TFRMSPROP_RETURN_IF_ERROR(CheckEmpty(mg_out, {"mg result (not centered)"}));
  }
  // values: (n, *table[1:]).
  const std::int64_t n = indices.dimensions()[0];
  std::vector<std::int64_t> rows(table.begin(), table.end());
  rows[0] = n;
  const ffi::AnyBuffer::Dimensions row_dims(rows.data(), rows.size());
  TFRMSPROP_RETURN_IF_ERROR(
      CheckBuffer(values, {"gradient values (one row per index)"}, type,
                  row_dims));
  if (apply) {
    TFRMSPROP_RETURN_IF_ERROR(
        CheckBuffer(var, {"var", "operand"}, type, table));
    TFRMSPROP_RETURN_IF_ERROR(
        CheckBuffer(first, {"var", "result"}, type, table));
    TFRMSPROP_RETURN_IF_ERROR(CheckAliased(first, var, {"var", "result"}));
    if (unique.element_count() != 0) {
      return Invalid("the unique result must be empty with apply.");
    }
  } else {
    TFRMSPROP_RETURN_IF_ERROR(CheckEmpty(var, {"var operand (not apply)"}));
    TFRMSPROP_RETURN_IF_ERROR(
        CheckBuffer(first, {"update rows", "result"}, type, row_dims));
    if (unique.dimensions()[0] != n) {
      return Invalid("the unique result has ", unique.dimensions()[0],
                     " indices, expected ", n, ".");
    }
  }
  const std::int32_t* index = indices.typed_data();
  for (std::int64_t k = 0; k < n; ++k) {
    if (index[k] < 0 || index[k] > num_rows) {
      return Invalid("indices[", k, "] = ", index[k], " is not in [0, ",
                     num_rows, "] (", num_rows, " marks an invalid index).");
    }
  }
  return ffi::Error::Success();
}

ffi::Error Sparse(ffi::AnyBuffer hypers, ffi::AnyBuffer values,
                  Indices indices, ffi::AnyBuffer var,
                  ffi::AnyBuffer ms, ffi::AnyBuffer mg, ffi::AnyBuffer mom,
                  ffi::Result<ffi::AnyBuffer> first,
                  ffi::Result<Indices> unique,
                  ffi::Result<ffi::AnyBuffer> ms_out,
                  ffi::Result<ffi::AnyBuffer> mg_out,
                  ffi::Result<ffi::AnyBuffer> mom_out, bool centered,
                  bool apply, ffi::ThreadPool pool) {
  TFRMSPROP_RETURN_IF_ERROR(CheckHypers(hypers));
  const ffi::DataType type = hypers.element_type();
  return DispatchFloat</*kBFloat16=*/false>(type, [&](auto zero) {
    using T = decltype(zero);
    if constexpr (std::is_same_v<T, float>) {
      if (!HasPacketRsqrt()) {
        return Invalid("the float32 sparse kernel needs AVX (TF's packet "
                       "rsqrt).");
      }
    }
    TFRMSPROP_RETURN_IF_ERROR(CheckSparse(
        type, values, indices, var, ms, mg, mom, *first, *unique, *ms_out,
        *mg_out, *mom_out, centered, apply));
    const auto table = ms.dimensions();
    const std::int64_t num_rows = table[0];
    std::size_t width = 1;  // Elements per row (an empty table has rows too).
    for (std::size_t d = 1; d < table.size(); ++d) width *= table[d];
    const std::size_t n = indices.element_count();
    const Hypers<T> h = ReadHypers<T>(hypers);
    const T* gp = values.typed_data<T>();
    const std::int32_t* ip = indices.typed_data();
    // The variable and slots are read through their results, which XLA
    // aliases to the operands (copying first if it cannot donate them).
    T* out = first->typed_data<T>();
    std::int32_t* unique_p = apply ? nullptr : unique->typed_data();
    T* ms_p = ms_out->typed_data<T>();
    T* mg_p = centered ? mg_out->typed_data<T>() : nullptr;
    T* mom_p = mom_out->typed_data<T>();
    return DispatchFlags(
        [&](auto kCentered, auto kApply) {
          RunRows<T, kCentered, kApply>(pool, gp, ip, n, num_rows, width,
                                        out, unique_p, ms_p, mg_p, mom_p, h);
          return ffi::Error::Success();
        },
        centered, apply);
  });
}

}  // namespace
}  // namespace tfrmsprop

// Whether this CPU can run float32 leaves (x86-64 with AVX, for TF's packet
// rsqrt); elsewhere the package keeps float32 sparse leaves on the jnp path.
extern "C" int TfRmspropSparseF32Supported() {
  return tfrmsprop::HasPacketRsqrt() ? 1 : 0;
}

// An absent optional operand or result is an empty array of the leaf dtype.
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    TfRmspropSparse, tfrmsprop::Sparse,
    ffi::Ffi::Bind()
        // [lr, rho, 1 - rho, momentum, epsilon] in the leaf dtype, float32 or
        // float64 (tfrmsprop.h::HyperIndex); its dtype picks the loops.
        .Arg<ffi::AnyBuffer>()
        // values: the clipped gradient rows (n, *table[1:]), duplicates
        // allowed.
        .Arg<ffi::AnyBuffer>()
        // indices: (n,) rows of the table in [0, num_rows]; num_rows marks
        // an invalid index, which changes nothing.
        .Arg<tfrmsprop::Indices>()
        // var: the variable (apply), else empty.
        .Arg<ffi::AnyBuffer>()
        // ms: the ms slot, (num_rows, ...); its shape is the table's.
        .Arg<ffi::AnyBuffer>()
        // mg: the mg slot (centered), else empty.
        .Arg<ffi::AnyBuffer>()
        // mom: the mom slot.
        .Arg<ffi::AnyBuffer>()
        // The new variable (apply, aliased to var), else the update rows
        // (n, *table[1:]): -mom on the distinct indices, then -0 padding.
        .Ret<ffi::AnyBuffer>()
        // The distinct indices (n,) of the update rows, padded with
        // num_rows (not apply), else empty.
        .Ret<tfrmsprop::Indices>()
        // The new ms, aliased to ms.
        .Ret<ffi::AnyBuffer>()
        // The new mg (centered, aliased to mg), else empty.
        .Ret<ffi::AnyBuffer>()
        // The new mom, aliased to mom.
        .Ret<ffi::AnyBuffer>()
        // The mg slot is present (P8; else P7).
        .Attr<bool>("centered")
        // Update var in place instead of returning the update rows.
        .Attr<bool>("apply")
        // XLA's intra-op thread pool, which runs the rows (parallel.h).
        .Ctx<ffi::ThreadPool>());
