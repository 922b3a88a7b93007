// The heads' transpose with RoPE (`ops::rope`).
// Axes 1 and 2 swapped: x `[B, P, Q, d]` → y `[B, Q, P, d]`, optionally rotated (RoPE, rotate-half
// layout, `cos`/`sin` `[positions, d/2]`) by the position on axis `pos_axis` (1: P, 2: Q) with
// `sgn` on the sine (−1: the inverse rotation). One thread per pair (i, i + d/2).
template <typename T>
__device__ void swap12(const T* x, T* y, const T* cos, const T* sin, int P, int Q, int d, int pos_axis, float sgn, long pairs) {
  int h = d / 2;
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < pairs; idx += (long)gridDim.x * blockDim.x) {
    int i = (int)(idx % h);
    long r = idx / h;
    int p = (int)(r % P);
    r /= P;
    int q = (int)(r % Q);
    long b = r / Q;
    long src = ((b * P + p) * Q + q) * d, dst = ((b * Q + q) * P + p) * d;
    float x1 = ld(x, src + i), x2 = ld(x, src + i + h);
    if (pos_axis > 0) {
      long at = (long)(pos_axis == 1 ? p : q) * h + i;
      float c = ld(cos, at), s = sgn * ld(sin, at);
      st(y, dst + i, x1 * c - x2 * s);
      st(y, dst + i + h, x2 * c + x1 * s);
    } else {
      st(y, dst + i, x1);
      st(y, dst + i + h, x2);
    }
  }
}
#define SWAP12_KERNELS(T, S) \
extern "C" __global__ void swap12_##S(const T* x, T* y, const T* c, const T* s, int P, int Q, int d, int pa, float sg, long n) { swap12(x, y, c, s, P, Q, d, pa, sg, n); }
SWAP12_KERNELS(float, f32)
SWAP12_KERNELS(bf16_t, bf16)
