// LoRA's hashed dropout (`ops::dropout`).
// Whether element `i` survives dropout for `seed`: a 32-bit mix of (seed, index) below `keep`.
__device__ __forceinline__ bool keep_elem(unsigned int s, long i, float keep) {
  unsigned int h = mix32((unsigned int)i ^ mix32(s ^ (unsigned int)(i >> 32)));
  return (float)(h >> 8) * (1.0f / 16777216.0f) < keep;
}
__device__ __forceinline__ unsigned int seed32(unsigned long long seed) { return mix32((unsigned int)seed ^ mix32((unsigned int)(seed >> 32))); }
template <typename T>
__device__ void dropout_mask(T* out, long n, unsigned long long seed, float keep, float scale) {
  unsigned int s = seed32(seed);
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    st(out, i, keep_elem(s, i, keep) ? scale : 0.f);
}
// `x ⊙ mask` with the mask of `dropout_mask` for the same seed, never stored.
template <typename T>
__device__ void dropout_apply(const T* x, T* out, long n, unsigned long long seed, float keep, float scale, int vec) {
  unsigned int s = seed32(seed);
  long n8 = n / 8;
  for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < n8; c += (long)gridDim.x * blockDim.x) {
    float v[8];
    ld8(x, c * 8, v, vec);
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = keep_elem(s, c * 8 + k, keep) ? v[k] * scale : 0.f;
    st8(out, c * 8, v, vec);
  }
  if (blockIdx.x == 0)
    for (long i = n8 * 8 + threadIdx.x; i < n; i += blockDim.x) st(out, i, keep_elem(s, i, keep) ? ld(x, i) * scale : 0.f);
}
#define DROPOUT_KERNELS(T, S) \
extern "C" __global__ void dropout_mask_##S(T* out, long n, unsigned long long seed, float keep, float scale) { dropout_mask(out, n, seed, keep, scale); } \
extern "C" __global__ void dropout_apply_##S(const T* x, T* out, long n, unsigned long long seed, float keep, float scale, int vec) { dropout_apply(x, out, n, seed, keep, scale, vec); }
DROPOUT_KERNELS(float, f32)
DROPOUT_KERNELS(bf16_t, bf16)
