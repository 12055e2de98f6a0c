// What the two XLA FFI handlers (dense_kernel.cc, sparse_kernel.cc) share:
// the constants, the hyperparameter record in operand order, the dense
// operand layout, element-type and path dispatch, and operand checks.
//
// The Python side (optax_tfrmsprop/_src/cpu_kernel.py) builds the operands
// described here and reads the constants below from the library
// (TfRmspropEigenPacketBytes, TfRmspropNumHypers), refusing a library that
// disagrees with it. Every operand is checked again here: a mismatch is an
// ffi::Error, never a bad read or write.

#ifndef OPTAX_TFRMSPROP_CSRC_TFRMSPROP_H_
#define OPTAX_TFRMSPROP_CSRC_TFRMSPROP_H_

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include "bfloat16.h"
#include "xla/ffi/api/ffi.h"

namespace tfrmsprop {

namespace ffi = xla::ffi;

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------

// Eigen's packet on the AVX build TF ships, in bytes: reductions sum 32-byte
// packets (numerics.eigen_sum) and the sparse kernels take the packet rsqrt
// on 8 float lanes (update_rules.packet_rsqrt). The one definition: Python's
// numerics.EIGEN_PACKET_BYTES mirrors it and cpu_kernel.py checks, on
// loading the library, that both agree.
inline constexpr std::size_t kEigenPacketBytes = 32;
// Float lanes of one packet (Eigen's Packet8f).
inline constexpr std::size_t kFloatPacket = kEigenPacketBytes / sizeof(float);

// Below this many elements in a call, waking the other threads costs more
// than it saves.
inline constexpr std::size_t kMinParallelElements = std::size_t{1} << 15;

// ---------------------------------------------------------------------------
// The hyperparameter record
// ---------------------------------------------------------------------------

// The first operand of both handlers: a (5,) array in the leaves' dtype, in
// this order (cpu_kernel.HYPER_ORDER; transform materialises it per dtype as
// TF's _prepare_local does).
enum HyperIndex : std::size_t {
  kLr,           // the learning rate at this step (after decay)
  kRho,          // rho
  kOneMinusRho,  // 1 - rho, computed in the leaf dtype
  kMomentum,     // the momentum coefficient
  kEpsilon,      // epsilon, after the flavor's epsilon rule
  kNumHypers,
};

template <typename T>
struct Hypers {
  T lr, rho, one_minus_rho, momentum, epsilon;
};

// Reads the record from a hyperparameter operand already checked by
// CheckHypers, in the arithmetic type of T (bfloat16.h).
template <typename T>
Hypers<Compute<T>> ReadHypers(ffi::AnyBuffer hypers) {
  const T* h = hypers.typed_data<T>();
  return {ToCompute(h[kLr]), ToCompute(h[kRho]), ToCompute(h[kOneMinusRho]),
          ToCompute(h[kMomentum]), ToCompute(h[kEpsilon])};
}

// ---------------------------------------------------------------------------
// The dense operand layout (tfrmsprop_dense), the one variadic call
// ---------------------------------------------------------------------------
//
// All leaves of one dtype go through one call, so the threads (parallel.h)
// split the elements of the whole tree (many small leaves still use every
// core).
// After the hyperparameters, each leaf contributes, in this order:
//
//   operands: g, [var if apply], ms, [mg if centered], [mom if momentum]
//   results:     [var if apply], ms, [mg if centered], [mom if momentum]
//
// so result r of a leaf is operand r + 1 of that leaf, and must be aliased to
// it (same buffer): the kernel reads the variable and slots through the
// result. Every operand and result of a leaf has the dtype of the
// hyperparameters and the shape of g. Without apply, the momentum-free
// paths (P1/P2) update only their slots.
struct DenseLayout {
  bool centered, momentum, apply;

  std::size_t Results() const {
    return std::size_t{apply} + 1 + std::size_t{centered} +
           std::size_t{momentum};
  }
  std::size_t Operands() const { return 1 + Results(); }
};

// ---------------------------------------------------------------------------
// Errors and checks
// ---------------------------------------------------------------------------

inline std::ostream& operator<<(std::ostream& os,
                                ffi::AnyBuffer::Dimensions dims) {
  os << "(";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    os << (i ? ", " : "") << dims[i];
  }
  return os << (dims.size() == 1 ? ",)" : ")");
}

// An InvalidArgument error whose message is the parts, streamed.
template <typename... Parts>
ffi::Error Invalid(const Parts&... parts) {
  std::ostringstream os;
  os << "tfrmsprop: ";
  (os << ... << parts);
  return ffi::Error::InvalidArgument(os.str());
}

// The hyperparameter operand: kNumHypers elements of a kernel float type.
inline ffi::Error CheckHypers(ffi::AnyBuffer hypers) {
  const auto dims = hypers.dimensions();
  if (dims.size() != 1 || dims[0] != kNumHypers) {
    return Invalid("the hyperparameter operand must have shape (",
                   std::size_t{kNumHypers}, ",) [lr, rho, 1 - rho, momentum, "
                   "epsilon], got ", dims, ".");
  }
  return ffi::Error::Success();
}

// Names an operand or result in error messages ("leaf 3 mom operand"); it is
// formatted only when a check fails, so checking costs no allocation.
struct Where {
  const char* role;        // "ms", "gradient values", ...
  const char* kind = "";   // "operand", "result" or ""
  std::int64_t leaf = -1;  // the dense leaf, or -1
};

inline std::ostream& operator<<(std::ostream& os, const Where& where) {
  if (where.leaf >= 0) os << "leaf " << where.leaf << " ";
  os << where.role;
  if (*where.kind) os << " " << where.kind;
  return os;
}

// Whether two shapes are equal (inline: a call per leaf operand is hot).
inline bool SameDims(ffi::AnyBuffer::Dimensions a,
                     ffi::AnyBuffer::Dimensions b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

// `buffer` has element type `type` and dimensions `dims`.
inline ffi::Error CheckBuffer(ffi::AnyBuffer buffer, const Where& where,
                              ffi::DataType type,
                              ffi::AnyBuffer::Dimensions dims) {
  if (buffer.element_type() != type || !SameDims(buffer.dimensions(), dims)) {
    return Invalid(where, " has dtype ", buffer.element_type(), " and shape ",
                   buffer.dimensions(), ", expected dtype ", type,
                   " and shape ", dims, ".");
  }
  return ffi::Error::Success();
}

// `result` is the same buffer as its operand (XLA's input/output aliasing),
// which the kernel reads through the result.
inline ffi::Error CheckAliased(ffi::AnyBuffer result, ffi::AnyBuffer operand,
                               const Where& where) {
  if (result.element_count() != 0 &&
      result.untyped_data() != operand.untyped_data()) {
    return Invalid(where, ": the result is not aliased to its operand.");
  }
  return ffi::Error::Success();
}

// An absent optional operand or result: an empty buffer.
inline ffi::Error CheckEmpty(ffi::AnyBuffer buffer, const Where& where) {
  if (buffer.element_count() != 0) {
    return Invalid(where, " must be empty on this path, got shape ",
                   buffer.dimensions(), ".");
  }
  return ffi::Error::Success();
}

// Returns from the enclosing function if `expr` is an error.
#define TFRMSPROP_RETURN_IF_ERROR(expr)                      \
  do {                                                       \
    if (::xla::ffi::Error e = (expr); e.failure()) return e; \
  } while (0)

// ---------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------

// Calls f(T{}) for the kernels' types: float or double, and BFloat16 with
// kBFloat16 (the dense kernel; TF's sparse momentum kernels have none).
template <bool kBFloat16, typename F>
ffi::Error DispatchFloat(ffi::DataType type, F&& f) {
  switch (type) {
    case ffi::DataType::F32:
      return f(float{});
    case ffi::DataType::F64:
      return f(double{});
    case ffi::DataType::BF16:
      if constexpr (kBFloat16) return f(BFloat16{});
      [[fallthrough]];
    default:
      return Invalid("this kernel runs float32, float64",
                     kBFloat16 ? " and bfloat16" : "", " leaves, got ", type,
                     ".");
  }
}

// Calls f(std::bool_constant<b>{}...) for the run-time flags b..., so each
// combination of flags gets its own instantiation of the loops.
template <bool... kFixed, typename F>
ffi::Error DispatchFlags(F&& f) {
  return f(std::bool_constant<kFixed>{}...);
}
template <bool... kFixed, typename F, typename... Flags>
ffi::Error DispatchFlags(F&& f, bool flag, Flags... flags) {
  return flag ? DispatchFlags<kFixed..., true>(std::forward<F>(f), flags...)
              : DispatchFlags<kFixed..., false>(std::forward<F>(f), flags...);
}

}  // namespace tfrmsprop

#endif  // OPTAX_TFRMSPROP_CSRC_TFRMSPROP_H_
