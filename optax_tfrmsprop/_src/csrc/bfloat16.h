// The arithmetic types of the loops: bfloat16 as TF's CPU kernels compute it.
//
// Eigen evaluates every bfloat16 operation (Eigen::bfloat16, scalar or
// packet) in float and rounds the result to bfloat16, to nearest even.
// float carries 24 significant bits against bfloat16's 8, more than 2 * 8 + 2,
// so this double rounding gives the correctly rounded bfloat16 result of
// +, -, *, / and sqrt: the same bits as TF's kernels and as the XLA path
// (update_rules with numerics.rounded).
//
// The loops (dense_loops.h) load each element with ToCompute, compute in
// Compute<T> and store with ToStorage. For float and double these are the
// identity. A bfloat16 element is computed as a BFloat16Arith: a float that
// holds a bfloat16 value (its low 16 bits zero), each operation rounded back
// to one. It stays a float between operations, so the loops vectorise with
// two instructions per rounding besides the operation itself.
//
// NaN: a float operation on such values returns a quiet NaN whose low 16 bits
// are zero (the default NaN, or an operand's, quieted), which the rounding
// leaves unchanged; Eigen returns a NaN too, with the payload 0x40.

#ifndef OPTAX_TFRMSPROP_CSRC_BFLOAT16_H_
#define OPTAX_TFRMSPROP_CSRC_BFLOAT16_H_

#include <cmath>
#include <cstdint>
#include <cstring>

namespace tfrmsprop {

// The storage type XLA calls BF16: the top 16 bits of a float. An enum, a
// scalar to the compiler (a struct element would stop vectorisation).
enum class BFloat16 : std::uint16_t {};

// A bfloat16 value computed in float; see above.
struct BFloat16Arith {
  float value;
};

inline std::uint32_t Bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float FromBits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// `f` rounded to the nearest bfloat16, ties to even (Eigen's
// float_to_bfloat16_rtne), still as a float.
inline BFloat16Arith RoundToBFloat16(float f) {
  const std::uint32_t u = Bits(f);
  return {FromBits((u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u)};
}

inline BFloat16Arith operator+(BFloat16Arith a, BFloat16Arith b) {
  return RoundToBFloat16(a.value + b.value);
}
inline BFloat16Arith operator-(BFloat16Arith a, BFloat16Arith b) {
  return RoundToBFloat16(a.value - b.value);
}
inline BFloat16Arith operator*(BFloat16Arith a, BFloat16Arith b) {
  return RoundToBFloat16(a.value * b.value);
}
inline BFloat16Arith operator/(BFloat16Arith a, BFloat16Arith b) {
  return RoundToBFloat16(a.value / b.value);
}

// The square root the loops call, for every arithmetic type.
inline float Sqrt(float x) { return std::sqrt(x); }
inline double Sqrt(double x) { return std::sqrt(x); }
inline BFloat16Arith Sqrt(BFloat16Arith x) {
  return RoundToBFloat16(std::sqrt(x.value));
}

// Between an element in memory and its arithmetic type.
inline float ToCompute(float x) { return x; }
inline double ToCompute(double x) { return x; }
inline BFloat16Arith ToCompute(BFloat16 x) {
  return {FromBits(std::uint32_t{static_cast<std::uint16_t>(x)} << 16)};
}
inline float ToStorage(float x) { return x; }
inline double ToStorage(double x) { return x; }
inline BFloat16 ToStorage(BFloat16Arith x) {
  return static_cast<BFloat16>(Bits(x.value) >> 16);
}

// The type the loops compute elements of storage type T in.
template <typename T>
using Compute = decltype(ToCompute(T{}));

}  // namespace tfrmsprop

#endif  // OPTAX_TFRMSPROP_CSRC_BFLOAT16_H_
