// Attention's causal softmax and its backward (`attention::softmax`).
// The causal softmax and its backward keep a row in registers (up to CACHE values a thread:
// rows of up to CACHE·blockDim columns, see `row_threads`) and read only the visible columns
// `0..=q`; longer rows take the looping form.
#define CACHE 8
template <typename T>
__device__ void causal_softmax(const T* x, T* y, int t, int cols, float scale) {
  __shared__ float sh[32];
  long row = blockIdx.x;
  int q = (int)(row % t);
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  float m = neg_inf();
  if (cols <= CACHE * (int)blockDim.x) {
    float v[CACHE];
#pragma unroll
    for (int k = 0; k < CACHE; k++) {
      int j = threadIdx.x + k * blockDim.x;
      v[k] = j <= q ? ld(xr, j) * scale : neg_inf();
      m = fmaxf(m, v[k]);
    }
    m = block_max(m, sh);
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < CACHE; k++) { v[k] = __expf(v[k] - m); s += v[k]; }
    float inv = 1.f / block_sum(s, sh);
#pragma unroll
    for (int k = 0; k < CACHE; k++) {
      int j = threadIdx.x + k * blockDim.x;
      if (j < cols) st(yr, j, v[k] * inv);
    }
    return;
  }
  for (int j = threadIdx.x; j <= q; j += blockDim.x) m = fmaxf(m, ld(xr, j) * scale);
  m = block_max(m, sh);
  float s = 0.f;
  for (int j = threadIdx.x; j <= q; j += blockDim.x) s += __expf(ld(xr, j) * scale - m);
  s = block_sum(s, sh);
  float inv = 1.f / s;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) st(yr, j, j <= q ? __expf(ld(xr, j) * scale - m) * inv : 0.f);
}
template <typename T>
__device__ void causal_softmax_bwd(const T* p, const T* dp, T* ds, int t, int cols, float scale) {
  __shared__ float sh[32];
  long row = blockIdx.x;
  int q = (int)(row % t);
  const T* pr = p + row * cols;
  const T* dr = dp + row * cols;
  T* out = ds + row * cols;
  float dot = 0.f;
  if (cols <= CACHE * (int)blockDim.x) {
    float pv[CACHE], dv[CACHE];
#pragma unroll
    for (int k = 0; k < CACHE; k++) {
      int j = threadIdx.x + k * blockDim.x;
      pv[k] = j <= q ? ld(pr, j) : 0.f;
      dv[k] = j <= q ? ld(dr, j) : 0.f;
      dot += pv[k] * dv[k];
    }
    dot = block_sum(dot, sh);
#pragma unroll
    for (int k = 0; k < CACHE; k++) {
      int j = threadIdx.x + k * blockDim.x;
      if (j < cols) st(out, j, scale * pv[k] * (dv[k] - dot));
    }
    return;
  }
  for (int j = threadIdx.x; j <= q; j += blockDim.x) dot += ld(pr, j) * ld(dr, j);
  dot = block_sum(dot, sh);
  for (int j = threadIdx.x; j < cols; j += blockDim.x) st(out, j, j <= q ? scale * ld(pr, j) * (ld(dr, j) - dot) : 0.f);
}
// The same two kernels with each thread owning 8 adjacent columns (16-byte accesses): rows of a
// multiple of 8 columns, at most 8·blockDim, 16-byte aligned.
template <typename T>
__device__ void causal_softmax_v(const T* x, T* y, int t, int cols, float scale) {
  __shared__ float sh[32];
  long row = blockIdx.x;
  int q = (int)(row % t);
  int c0 = threadIdx.x * 8;
  float v[8], m = neg_inf();
  if (c0 < cols && c0 <= q) {
    ld8(x + row * cols, c0, v, true);
#pragma unroll
    for (int k = 0; k < 8; k++) { v[k] = c0 + k <= q ? v[k] * scale : neg_inf(); m = fmaxf(m, v[k]); }
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = neg_inf();
  }
  m = block_max(m, sh);
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < 8; k++) { v[k] = __expf(v[k] - m); s += v[k]; }
  float inv = 1.f / block_sum(s, sh);
  if (c0 < cols) {
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] *= inv;
    st8(y + row * cols, c0, v, true);
  }
}
template <typename T>
__device__ void causal_softmax_bwd_v(const T* p, const T* dp, T* ds, int t, int cols, float scale) {
  __shared__ float sh[32];
  long row = blockIdx.x;
  int q = (int)(row % t);
  int c0 = threadIdx.x * 8;
  float pv[8], dv[8], dot = 0.f;
  bool live = c0 < cols && c0 <= q;
  if (live) {
    ld8(p + row * cols, c0, pv, true);
    ld8(dp + row * cols, c0, dv, true);
#pragma unroll
    for (int k = 0; k < 8; k++) { if (c0 + k > q) { pv[k] = 0.f; dv[k] = 0.f; } dot += pv[k] * dv[k]; }
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) { pv[k] = 0.f; dv[k] = 0.f; }
  }
  dot = block_sum(dot, sh);
  if (c0 < cols) {
#pragma unroll
    for (int k = 0; k < 8; k++) pv[k] = scale * pv[k] * (dv[k] - dot);
    st8(ds + row * cols, c0, pv, true);
  }
}
#define SOFTMAX_KERNELS(T, S) \
extern "C" __global__ void causal_softmax_v_##S(const T* x, T* y, int t, int cols, float scale) { causal_softmax_v(x, y, t, cols, scale); } \
extern "C" __global__ void causal_softmax_bwd_v_##S(const T* p, const T* dp, T* ds, int t, int cols, float scale) { causal_softmax_bwd_v(p, dp, ds, t, cols, scale); } \
extern "C" __global__ void causal_softmax_##S(const T* x, T* y, int t, int cols, float scale) { causal_softmax(x, y, t, cols, scale); } \
extern "C" __global__ void causal_softmax_bwd_##S(const T* p, const T* dp, T* ds, int t, int cols, float scale) { causal_softmax_bwd(p, dp, ds, t, cols, scale); }
SOFTMAX_KERNELS(float, f32)
SOFTMAX_KERNELS(bf16_t, bf16)
