// RMSNorm's input gradient (`ops::norm`).
// RMSNorm's input gradient for a frozen weight, one block per row, f32 inside:
// ∂x = r·(∂y⊙w) − x·r³·mean((∂y⊙w)⊙x), r = rsqrt(mean(x²) + ε).
template <typename T>
__device__ void rms_norm_bwd(const T* x, const T* w, const T* dy, T* dx, int cols, float eps) {
  __shared__ float sh[32];
  long row = blockIdx.x;
  const T* xr = x + row * cols;
  const T* dr = dy + row * cols;
  T* out = dx + row * cols;
  float ss = 0.f, dot = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    float xv = ld(xr, j);
    ss += xv * xv;
    dot += ld(dr, j) * ld(w, j) * xv;
  }
  ss = block_sum(ss, sh);
  dot = block_sum(dot, sh);
  float r = rsqrtf(ss / cols + eps);
  float c = r * r * r * dot / cols;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) st(out, j, r * ld(dr, j) * ld(w, j) - ld(xr, j) * c);
}
#define RMS_NORM_KERNELS(T, S) \
extern "C" __global__ void rms_norm_bwd_##S(const T* x, const T* w, const T* dy, T* dx, int cols, float eps) { rms_norm_bwd(x, w, dy, dx, cols, eps); }
RMS_NORM_KERNELS(float, f32)
RMS_NORM_KERNELS(bf16_t, bf16)
