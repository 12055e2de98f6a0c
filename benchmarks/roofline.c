/* The C roofline of the dense benchmark: one RMSprop step of a TF path as a
 * minimal single pass that reads the gradient, the variable and each slot
 * once and writes the variable and each slot once, in place. Built at run
 * time by benchmarks/contenders.py with
 *   cc -O3 -march=native -fopenmp -fno-math-errno -ffp-contract=off
 * (without -fno-math-errno the sqrt loops do not vectorise). It is the
 * memory-bandwidth limit of the update on this machine, not a product:
 * -march=native is not portable. */
#include <math.h>
#include <stddef.h>

void step(const float* g, float* v, float* ms, float* mg, float* mom,
          size_t n, int centered, int momentum, float lr, float rho, float mu,
          float eps) {
  const float c = 1.0f - rho;
  if (!momentum && !centered) {
#pragma omp parallel for simd
    for (size_t i = 0; i < n; ++i) {
      ms[i] = rho * ms[i] + c * g[i] * g[i];
      v[i] -= lr * g[i] / (sqrtf(ms[i]) + eps);
    }
  } else if (!momentum) {
#pragma omp parallel for simd
    for (size_t i = 0; i < n; ++i) {
      ms[i] = rho * ms[i] + c * g[i] * g[i];
      mg[i] = rho * mg[i] + c * g[i];
      v[i] -= lr * g[i] / (sqrtf(ms[i] - mg[i] * mg[i]) + eps);
    }
  } else if (!centered) {
#pragma omp parallel for simd
    for (size_t i = 0; i < n; ++i) {
      ms[i] += (g[i] * g[i] - ms[i]) * c;
      mom[i] = mom[i] * mu + g[i] * lr / sqrtf(ms[i] + eps);
      v[i] -= mom[i];
    }
  } else {
#pragma omp parallel for simd
    for (size_t i = 0; i < n; ++i) {
      ms[i] += (g[i] * g[i] - ms[i]) * c;
      mg[i] += (g[i] - mg[i]) * c;
      mom[i] = mom[i] * mu + g[i] * lr / sqrtf(ms[i] - mg[i] * mg[i] + eps);
      v[i] -= mom[i];
    }
  }
}
