// The LM head's cross-entropy rows and their gradient (`ops::loss`).
// Cross-entropy rows: one pass with an online max/sum (8-wide reads when `vec`), then the
// (max, sum) pairs combined across the block.
__device__ __forceinline__ void ms_add(float& m, float& s, float x) {
  if (x > m) { s = s * __expf(m - x) + 1.f; m = x; } else { s += __expf(x - m); }
}
__device__ __forceinline__ void ms_combine(float& m, float& s, float m2, float s2) {
  float mx = fmaxf(m, m2);
  if (mx == neg_inf()) return;
  s = s * __expf(m - mx) + s2 * __expf(m2 - mx);
  m = mx;
}
template <typename T>
__device__ void ce_fwd(const T* logits, const unsigned int* targets, float* stats, int v, int vec) {
  __shared__ float shm[32], shs[32];
  long row = blockIdx.x;
  const T* lr = logits + row * v;
  float m = neg_inf(), s = 0.f;
  int v8 = vec ? v / 8 : 0;
  for (int c = threadIdx.x; c < v8; c += blockDim.x) {
    float x[8];
    ld8(lr, (long)c * 8, x, true);
#pragma unroll
    for (int k = 0; k < 8; k++) ms_add(m, s, x[k]);
  }
  for (int j = v8 * 8 + threadIdx.x; j < v; j += blockDim.x) ms_add(m, s, ld(lr, j));
  for (int o = 16; o > 0; o >>= 1) ms_combine(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  if (lane == 0) { shm[w] = m; shs[w] = s; }
  __syncthreads();
  if (w == 0) {
    m = lane < nw ? shm[lane] : neg_inf();
    s = lane < nw ? shs[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) ms_combine(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) {
      float lse = m + logf(s);
      stats[2 * row] = lse - ld(lr, targets[row]);
      stats[2 * row + 1] = lse;
    }
  }
}
template <typename T>
__device__ void ce_bwd(const T* logits, const unsigned int* targets, const float* stats, T* dl, int v, float g, int vec) {
  long row = blockIdx.x;
  const T* lr = logits + row * v;
  T* out = dl + row * v;
  float lse = stats[2 * row + 1];
  int tg = (int)targets[row];
  int v8 = vec ? v / 8 : 0;
  for (int c = threadIdx.x; c < v8; c += blockDim.x) {
    float x[8];
    ld8(lr, (long)c * 8, x, true);
#pragma unroll
    for (int k = 0; k < 8; k++) x[k] = (__expf(x[k] - lse) - (c * 8 + k == tg ? 1.f : 0.f)) * g;
    st8(out, (long)c * 8, x, true);
  }
  for (int j = v8 * 8 + threadIdx.x; j < v; j += blockDim.x) st(out, j, (__expf(ld(lr, j) - lse) - (j == tg ? 1.f : 0.f)) * g);
}
__device__ __forceinline__ unsigned int mix32(unsigned int x) {
  x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
  return x;
}
#define CROSS_ENTROPY_KERNELS(T, S) \
extern "C" __global__ void ce_fwd_##S(const T* l, const unsigned int* tg, float* st_, int v, int vec) { ce_fwd(l, tg, st_, v, vec); } \
extern "C" __global__ void ce_bwd_##S(const T* l, const unsigned int* tg, const float* st_, T* dl, int v, float g, int vec) { ce_bwd(l, tg, st_, dl, v, g, vec); }
CROSS_ENTROPY_KERNELS(float, f32)
CROSS_ENTROPY_KERNELS(bf16_t, bf16)
