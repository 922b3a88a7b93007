// Shared by every kernel file: bf16 as raw 16-bit words (NVRTC needs no CUDA headers), 8-wide
// loads and stores, warp and block reductions. The .cu files are compiled as one NVRTC module,
// this file first (see `ops::cuda`).
typedef unsigned short bf16_t;
__device__ __forceinline__ float ld(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, long i) { return __uint_as_float(((unsigned int)p[i]) << 16); }
__device__ __forceinline__ void st(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t* p, long i, float v) {
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = (bf16_t)((u >> 16) | 0x40u); return; }
  u += 0x7fffu + ((u >> 16) & 1u);
  p[i] = (bf16_t)(u >> 16);
}
// Eight consecutive elements: one 16-byte access for bf16 (two for f32) when `vec` (the caller
// checked 16-byte alignment), else element by element.
__device__ __forceinline__ void ld8(const bf16_t* p, long i, float* v, bool vec) {
  if (vec) {
    uint4 u = *(const uint4*)(p + i);
    unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) { v[2 * k] = __uint_as_float(w[k] << 16); v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u); }
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = ld(p, i + k);
  }
}
__device__ __forceinline__ void ld8(const float* p, long i, float* v, bool vec) {
  if (vec) {
    float4 a = *(const float4*)(p + i), b = *(const float4*)(p + i + 4);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = ld(p, i + k);
  }
}
__device__ __forceinline__ unsigned short to_bf16(float v) {
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (unsigned short)(u >> 16);
}
__device__ __forceinline__ void st8(bf16_t* p, long i, const float* v, bool vec) {
  if (vec) {
    unsigned int w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) w[k] = (unsigned int)to_bf16(v[2 * k]) | ((unsigned int)to_bf16(v[2 * k + 1]) << 16);
    *(uint4*)(p + i) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) p[i + k] = to_bf16(v[k]);
  }
}
__device__ __forceinline__ void st8(float* p, long i, const float* v, bool vec) {
  if (vec) {
    *(float4*)(p + i) = make_float4(v[0], v[1], v[2], v[3]);
    *(float4*)(p + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) p[i + k] = v[k];
  }
}
__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
__device__ float warp_max(float v) { for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o)); return v; }
__device__ float warp_sum(float v) { for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o); return v; }
__device__ float block_max(float v, float* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : neg_inf();
  return warp_max(v);
}
__device__ float block_sum(float v, float* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.f;
  return warp_sum(v);
}
