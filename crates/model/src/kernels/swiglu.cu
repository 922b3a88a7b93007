// SwiGLU forward and backward (`ops::swiglu`).
// SwiGLU `silu(g)·u` and its backward: out[0..n) = ∂g, out[n..2n) = ∂u.
template <typename T>
__device__ void swiglu_fwd(const T* g, const T* u, T* y, long n, int vec) {
  long n8 = n / 8;
  for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < n8; c += (long)gridDim.x * blockDim.x) {
    float a[8], b[8];
    ld8(g, c * 8, a, vec);
    ld8(u, c * 8, b, vec);
#pragma unroll
    for (int k = 0; k < 8; k++) a[k] = a[k] / (1.f + __expf(-a[k])) * b[k];
    st8(y, c * 8, a, vec);
  }
  if (blockIdx.x == 0)
    for (long i = n8 * 8 + threadIdx.x; i < n; i += blockDim.x) { float a = ld(g, i); st(y, i, a / (1.f + __expf(-a)) * ld(u, i)); }
}
template <typename T>
__device__ void swiglu_bwd(const T* g, const T* u, const T* dy, T* out, long n, int vec) {
  long n8 = n / 8;
  for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < n8; c += (long)gridDim.x * blockDim.x) {
    float a[8], b[8], d[8];
    ld8(g, c * 8, a, vec);
    ld8(u, c * 8, b, vec);
    ld8(dy, c * 8, d, vec);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float s = 1.f / (1.f + __expf(-a[k]));
      float dg = d[k] * b[k] * s * (1.f + a[k] * (1.f - s));
      b[k] = d[k] * a[k] * s;
      a[k] = dg;
    }
    st8(out, c * 8, a, vec);
    st8(out, n + c * 8, b, vec && n % 8 == 0);
  }
  if (blockIdx.x == 0)
    for (long i = n8 * 8 + threadIdx.x; i < n; i += blockDim.x) {
      float a = ld(g, i), d = ld(dy, i);
      float s = 1.f / (1.f + __expf(-a));
      st(out, i, d * ld(u, i) * s * (1.f + a * (1.f - s)));
      st(out, n + i, d * a * s);
    }
}
#define SWIGLU_KERNELS(T, S) \
extern "C" __global__ void swiglu_fwd_##S(const T* g, const T* u, T* y, long n, int vec) { swiglu_fwd(g, u, y, n, vec); } \
extern "C" __global__ void swiglu_bwd_##S(const T* g, const T* u, const T* dy, T* out, long n, int vec) { swiglu_bwd(g, u, dy, out, n, vec); }
SWIGLU_KERNELS(float, f32)
SWIGLU_KERNELS(bf16_t, bf16)
