//! Row-wise CUDA kernels for training, compiled at run time by NVRTC (so the CPU build and CI need
//! no CUDA): the causal softmax of attention (scale, mask and softmax in one pass, and its
//! backward) and the cross-entropy of LM-head logits (row log-sum-exp and target logit in one
//! pass, and `softmax − onehot` in one pass backward). Composed from candle ops, each of these was
//! five to ten passes over `[rows, cols]` tensors (measured on the H200, 1B shape, 8×1024 tokens:
//! attention 30 ms per layer forward+backward, cross-entropy 129 ms per step).
//!
//! One block per row; f32 arithmetic inside; bf16 handled as raw 16-bit words (no CUDA headers
//! needed by NVRTC). Each op is a candle `CustomOp` without backward, used by `handoff`'s ops
//! inside their forward and backward; [`available`] says whether a tensor's device has them.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// A candle op that only runs on a CUDA device (an `imp::` launch); the CPU path composes
/// candle's ops instead, so `cpu_fwd` is an error.
macro_rules! gpu_only {
    ($op:ty, 1, $name:literal, |$s:tt, $a:tt, $al:tt| $body:expr) => {
        impl CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
                no_cpu($name)
            }
            #[cfg(feature = "cuda")]
            fn cuda_fwd(&$s, $a: &candle_core::CudaStorage, $al: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
                $body
            }
        }
    };
    ($op:ty, 2, $name:literal, |$s:tt, $a:tt, $al:tt, $b:tt, $bl:tt| $body:expr) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
                no_cpu($name)
            }
            #[cfg(feature = "cuda")]
            #[rustfmt::skip]
            fn cuda_fwd(&$s, $a: &candle_core::CudaStorage, $al: &Layout, $b: &candle_core::CudaStorage, $bl: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
                $body
            }
        }
    };
    ($op:ty, 3, $name:literal, |$s:tt, $a:tt, $al:tt, $b:tt, $bl:tt, $c:tt, $cl:tt| $body:expr) => {
        impl CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            #[rustfmt::skip]
            fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
                no_cpu($name)
            }
            #[cfg(feature = "cuda")]
            #[rustfmt::skip]
            fn cuda_fwd(&$s, $a: &candle_core::CudaStorage, $al: &Layout, $b: &candle_core::CudaStorage, $bl: &Layout, $c: &candle_core::CudaStorage, $cl: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
                $body
            }
        }
    };
}

/// Whether the fused kernels run on `t`'s device (a CUDA device in a CUDA build, f32 or bf16).
pub fn available(t: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(t.dtype(), candle_core::DType::BF16 | candle_core::DType::F32)
}

/// `softmax(scale · x)` over the last dim of contiguous `x: [rows, t]` where row `r` sees
/// columns `0..=r % t` (the folded-GQA causal layout of `handoff::causal_attention`).
pub fn causal_softmax(x: &Tensor, t: usize, scale: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&CausalSoftmax { t, scale: scale as f32 })
}

/// `scale · p ⊙ (dp − Σ dp ⊙ p)` per row, with the same causal layout (0 where masked).
pub fn causal_softmax_backward(p: &Tensor, dp: &Tensor, t: usize, scale: f64) -> Result<Tensor> {
    p.contiguous()?.apply_op2_no_bwd(&dp.contiguous()?, &CausalSoftmaxBwd { t, scale: scale as f32 })
}

/// Per row of `logits: [n, vocab]` and `targets: [n]` (u32): `[n, 2]` f32 of
/// (`logsumexp − logit[target]`, `logsumexp`).
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2_no_bwd(&targets.contiguous()?, &CrossEntropyFwd)
}

/// `g · (softmax(logits) − onehot(target))` from the forward's row log-sum-exps (`stats[:, 1]`),
/// in `logits`' dtype.
pub fn cross_entropy_backward(logits: &Tensor, targets: &Tensor, stats: &Tensor, g: f64) -> Result<Tensor> {
    logits.contiguous()?.apply_op3_no_bwd(
        &targets.contiguous()?,
        &stats.contiguous()?,
        &CrossEntropyBwd { g: g as f32 },
    )
}

/// A dropout mask shaped like `x` in its dtype: `1/keep` (rounded to the dtype) where a
/// counter-based hash of (`seed`, element index) falls below `keep`, else 0 — one kernel,
/// deterministic for a seed.
pub fn dropout_mask(x: &Tensor, seed: u64, keep: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Dropout { seed, keep, apply: false })
}

/// `x ⊙ dropout_mask(x, seed, keep)` in one kernel, the mask never stored (backward applies the
/// same seed to the gradient).
pub fn dropout_apply(x: &Tensor, seed: u64, keep: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Dropout { seed, keep, apply: true })
}

/// SwiGLU `silu(g) ⊙ u` (same shapes), f32 inside.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op2_no_bwd(&u.contiguous()?, &SwiGlu)
}

/// SwiGLU's backward: `[2, ..g's shape]` holding `∂g` then `∂u`.
pub fn swiglu_backward(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op3_no_bwd(&u.contiguous()?, &dy.contiguous()?, &SwiGluBwd)
}

/// RMSNorm's input gradient for a weight that is not trained (`x`, `dy`: `[.., hidden]`,
/// `w: [hidden]`), one pass per row.
pub fn rms_norm_backward(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(&w.contiguous()?, &dy.contiguous()?, &RmsNormBwd { eps })
}

/// `x: [B, P, Q, d]` → `[B, Q, P, d]` (axes 1 and 2 swapped, contiguous), rotated by RoPE when
/// `rope` gives `(cos, sin, pos_axis, sign)`: tables `[positions, d/2]` indexed by axis
/// `pos_axis` (1 or 2) of `x`, `sign` −1 for the inverse rotation. One kernel.
pub fn swap12(x: &Tensor, rope: Option<(&Tensor, &Tensor, usize, f32)>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match rope {
        Some((c, s, pos_axis, sign)) => {
            x.apply_op3_no_bwd(&c.contiguous()?, &s.contiguous()?, &Swap12 { pos_axis, sign })
        }
        None => x.apply_op3_no_bwd(&x, &x, &Swap12 { pos_axis: 0, sign: 0.0 }),
    }
}

/// `Σ xᵢ·op(wᵢ)` over 2-D row-major terms (`op` = transpose when the flag is set), summed by
/// cuBLAS into one output (`β = 1` after the first product) instead of separate products and
/// adds: `[n, in]·[out, in]ᵀ + [n, r]·[out, r]ᵀ` (a frozen linear plus its LoRA), or
/// `[n, out]·[out, in] + [n, r]·[r, in]` (its input gradient). All contiguous, one dtype.
pub fn matmul_sum(terms: &[(&Tensor, &Tensor, bool)]) -> Result<Tensor> {
    let Some((x0, _, _)) = terms.first() else { candle_core::bail!("matmul_sum: no terms") };
    let terms: Vec<(Tensor, Tensor, bool)> =
        terms.iter().map(|(x, w, t)| Ok((x.contiguous()?, w.contiguous()?, *t))).collect::<Result<_>>()?;
    x0.contiguous()?.apply_op1_no_bwd(&MatmulSum { terms })
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct MatmulSum {
    terms: Vec<(Tensor, Tensor, bool)>,
}

gpu_only!(MatmulSum, 1, "ft-matmul-sum", |self, _, _| imp::matmul_sum(&self.terms));

struct Swap12 {
    pos_axis: usize,
    sign: f32,
}

fn swap12_slice<'a>(st: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("swap12: input not contiguous".into()))?;
    Ok(&st.as_slice::<f32>()?[start..end])
}

// The CPU runs this op too (f32 training, `crate::cpu_train::swap12`).
impl CustomOp3 for Swap12 {
    fn name(&self) -> &'static str {
        "ft-swap12"
    }

    #[rustfmt::skip]
    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, c: &CpuStorage, cl: &Layout, s: &CpuStorage, sl: &Layout) -> Result<(CpuStorage, Shape)> {
        let rope = if self.sign == 0.0 { None } else { Some((swap12_slice(c, cl)?, swap12_slice(s, sl)?, self.pos_axis, self.sign)) };
        let out = crate::cpu_train::swap12(swap12_slice(x, xl)?, xl.shape().dims4()?, rope)?;
        let (b, p, q, d) = xl.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((b, q, p, d))))
    }

    #[cfg(feature = "cuda")]
    #[rustfmt::skip]
    fn cuda_fwd(&self, x: &candle_core::CudaStorage, xl: &Layout, c: &candle_core::CudaStorage, cl: &Layout, s: &candle_core::CudaStorage, sl: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        imp::swap12(x, xl, c, cl, s, sl, self.pos_axis, self.sign)
    }
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Dropout {
    seed: u64,
    keep: f64,
    apply: bool,
}
struct SwiGlu;
struct SwiGluBwd;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct RmsNormBwd {
    eps: f32,
}

gpu_only!(Dropout, 1, "ft-dropout", |self, s, l| imp::dropout(s, l, self.seed, self.keep, self.apply));

gpu_only!(SwiGlu, 2, "ft-swiglu", |self, g, gl, u, ul| imp::swiglu(g, gl, u, ul));

gpu_only!(SwiGluBwd, 3, "ft-swiglu-bwd", |self, g, gl, u, ul, dy, dyl| imp::swiglu_bwd(
    g, gl, u, ul, dy, dyl
));

gpu_only!(RmsNormBwd, 3, "ft-rms-norm-bwd", |self, x, xl, w, wl, dy, dyl| imp::rms_norm_bwd(
    x, xl, w, wl, dy, dyl, self.eps
));

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct CausalSoftmax {
    t: usize,
    scale: f32,
}
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct CausalSoftmaxBwd {
    t: usize,
    scale: f32,
}
struct CrossEntropyFwd;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct CrossEntropyBwd {
    g: f32,
}

fn no_cpu(name: &str) -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("{name}: a CUDA kernel; the CPU path uses candle's ops")
}

gpu_only!(CausalSoftmax, 1, "ft-causal-softmax", |self, s, l| imp::causal_softmax(s, l, self.t, self.scale));

gpu_only!(CausalSoftmaxBwd, 2, "ft-causal-softmax-bwd", |self, p, pl, dp, dpl| imp::causal_softmax_bwd(
    p, pl, dp, dpl, self.t, self.scale
));

gpu_only!(CrossEntropyFwd, 2, "ft-cross-entropy", |self, x, xl, t, tl| imp::ce_fwd(x, xl, t, tl));

gpu_only!(CrossEntropyBwd, 3, "ft-cross-entropy-bwd", |self, x, xl, t, tl, s, sl| imp::ce_bwd(
    x, xl, t, tl, s, sl, self.g
));

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod imp {
    //! The launches. SAFETY (every `unsafe` here): outputs are allocated for exactly the elements
    //! the kernels write (every element of every row), inputs are contiguous views of the sizes
    //! the kernels read, and all work runs on candle's one stream.
    use std::sync::OnceLock;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorage, WrapErr};
    use candle_core::{DType, Layout, Result, Shape};
    use half::bf16;

    const SRC: &str = r#"
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
#define KERNELS(T, S) \
extern "C" __global__ void swap12_##S(const T* x, T* y, const T* c, const T* s, int P, int Q, int d, int pa, float sg, long n) { swap12(x, y, c, s, P, Q, d, pa, sg, n); } \
extern "C" __global__ void dropout_mask_##S(T* out, long n, unsigned long long seed, float keep, float scale) { dropout_mask(out, n, seed, keep, scale); } \
extern "C" __global__ void dropout_apply_##S(const T* x, T* out, long n, unsigned long long seed, float keep, float scale, int vec) { dropout_apply(x, out, n, seed, keep, scale, vec); } \
extern "C" __global__ void swiglu_fwd_##S(const T* g, const T* u, T* y, long n, int vec) { swiglu_fwd(g, u, y, n, vec); } \
extern "C" __global__ void swiglu_bwd_##S(const T* g, const T* u, const T* dy, T* out, long n, int vec) { swiglu_bwd(g, u, dy, out, n, vec); } \
extern "C" __global__ void causal_softmax_v_##S(const T* x, T* y, int t, int cols, float scale) { causal_softmax_v(x, y, t, cols, scale); } \
extern "C" __global__ void causal_softmax_bwd_v_##S(const T* p, const T* dp, T* ds, int t, int cols, float scale) { causal_softmax_bwd_v(p, dp, ds, t, cols, scale); } \
extern "C" __global__ void rms_norm_bwd_##S(const T* x, const T* w, const T* dy, T* dx, int cols, float eps) { rms_norm_bwd(x, w, dy, dx, cols, eps); } \
extern "C" __global__ void causal_softmax_##S(const T* x, T* y, int t, int cols, float scale) { causal_softmax(x, y, t, cols, scale); } \
extern "C" __global__ void causal_softmax_bwd_##S(const T* p, const T* dp, T* ds, int t, int cols, float scale) { causal_softmax_bwd(p, dp, ds, t, cols, scale); } \
extern "C" __global__ void ce_fwd_##S(const T* l, const unsigned int* tg, float* st_, int v, int vec) { ce_fwd(l, tg, st_, v, vec); } \
extern "C" __global__ void ce_bwd_##S(const T* l, const unsigned int* tg, const float* st_, T* dl, int v, float g, int vec) { ce_bwd(l, tg, st_, dl, v, g, vec); }
KERNELS(float, f32)
KERNELS(bf16_t, bf16)
"#;

    const MODULE: &str = "ferrotune_rows";

    fn ptx() -> Result<&'static str> {
        static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
        let r = PTX.get_or_init(|| {
            candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SRC)
                .map(|p| p.to_src())
                .map_err(|e| format!("{e:?}"))
        });
        match r {
            Ok(s) => Ok(s.as_str()),
            Err(e) => candle_core::bail!("compiling ferrotune's CUDA kernels with NVRTC: {e}"),
        }
    }

    fn suffix(dt: DType) -> Result<&'static str> {
        match dt {
            DType::BF16 => Ok("bf16"),
            DType::F32 => Ok("f32"),
            other => candle_core::bail!("ferrotune's CUDA kernels take f32 or bf16, not {other:?}"),
        }
    }

    fn rows_cols(l: &Layout) -> Result<(usize, usize)> {
        let cols = *l.dims().last().ok_or_else(|| candle_core::Error::Msg("scalar input".into()))?;
        Ok((l.shape().elem_count() / cols.max(1), cols))
    }

    fn cfg(rows: usize, threads: u32) -> LaunchConfig {
        LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
    }

    macro_rules! view {
        ($s:expr, $l:expr, $t:ty) => {{
            let (a, b) = $l
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("input not contiguous".into()))?;
            $s.as_cuda_slice::<$t>()?.slice(a..b)
        }};
    }

    /// Threads for a one-block-per-row kernel over `cols` columns: enough for the softmax
    /// kernels to keep the row in registers (8 values a thread) up to 8192 columns.
    fn row_threads(cols: usize) -> u32 {
        cols.div_ceil(8).next_power_of_two().clamp(128, 1024) as u32
    }

    /// A grid-stride launch over `n` elements.
    fn flat(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Whether a contiguous view starts on a 16-byte boundary for 8-element accesses (candle's
    /// buffers do; a narrowed view may not).
    fn aligned8(l: &Layout) -> bool {
        l.contiguous_offsets().is_some_and(|(a, _)| a % 8 == 0)
    }

    fn same_shape(op: &str, a: &Layout, b: &Layout) -> Result<()> {
        if a.shape() != b.shape() {
            candle_core::bail!("{op}: shapes {:?} and {:?} differ", a.shape(), b.shape())
        }
        Ok(())
    }

    pub fn dropout(
        s: &CudaStorage,
        l: &Layout,
        seed: u64,
        keep: f64,
        apply: bool,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let n = l.shape().elem_count();
        let kind = if apply { "dropout_apply" } else { "dropout_mask" };
        let func = dev.get_or_load_custom_func(&format!("{kind}_{}", suffix(s.dtype())?), MODULE, ptx()?)?;
        let n_i = n as i64;
        let keep_f = keep as f32;
        // The kept elements' factor, rounded to the dtype as a stored mask would be.
        let scale =
            if s.dtype() == DType::BF16 { bf16::from_f64(1.0 / keep).to_f32() } else { (1.0 / keep) as f32 };
        let vec = i32::from(aligned8(l));
        macro_rules! go {
            ($ty:ty) => {{
                let x = if apply { Some(view!(s, l, $ty)) } else { None };
                let y = unsafe { dev.alloc::<$ty>(n)? };
                let mut b = func.builder();
                if let Some(x) = &x {
                    b.arg(x);
                }
                b.arg(&y);
                b.arg(&n_i);
                b.arg(&seed);
                b.arg(&keep_f);
                b.arg(&scale);
                if apply {
                    b.arg(&vec);
                }
                unsafe { b.launch(flat(n.div_ceil(8))) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if s.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, l.shape().clone()))
    }

    pub fn matmul_sum(
        terms: &[(candle_core::Tensor, candle_core::Tensor, bool)],
    ) -> Result<(CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::cublas::{result as blas, sys as bsys};
        use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
        let (x0, w0, t0) = &terms[0];
        let dt = x0.dtype();
        let rows = x0.dim(0)?;
        let cols = if *t0 { w0.dim(0)? } else { w0.dim(1)? };
        let candle_core::Device::Cuda(dev) = x0.device() else {
            candle_core::bail!("matmul_sum: not on a CUDA device")
        };
        let (cuda_dt, _) = match dt {
            DType::BF16 => (bsys::cudaDataType_t::CUDA_R_16BF, 2),
            DType::F32 => (bsys::cudaDataType_t::CUDA_R_32F, 4),
            other => candle_core::bail!("matmul_sum: {other:?}"),
        };
        macro_rules! go {
            ($ty:ty) => {{
                let mut out = unsafe { dev.alloc::<$ty>(rows * cols)? };
                let handle = dev.cublas_handle();
                for (i, (x, w, transposed)) in terms.iter().enumerate() {
                    let (xr, k) = x.dims2()?;
                    let (wk, wn) = if *transposed { (w.dim(1)?, w.dim(0)?) } else { w.dims2()? };
                    if xr != rows || wk != k || wn != cols || x.dtype() != dt || w.dtype() != dt {
                        candle_core::bail!(
                            "matmul_sum: term {i} is {:?}·{:?}{} for [{rows}, {cols}]",
                            x.shape(),
                            w.shape(),
                            if *transposed { "ᵀ" } else { "" }
                        )
                    }
                    let (xs, xl) = x.storage_and_layout();
                    let (ws, wl) = w.storage_and_layout();
                    let (candle_core::Storage::Cuda(xs), candle_core::Storage::Cuda(ws)) = (&*xs, &*ws)
                    else {
                        candle_core::bail!("matmul_sum: not on a CUDA device")
                    };
                    let xv = view!(xs, xl, $ty);
                    let wv = view!(ws, wl, $ty);
                    let stream = out.stream().clone();
                    let (xp, _gx) = xv.device_ptr(&stream);
                    let (wp, _gw) = wv.device_ptr(&stream);
                    let (op, _go) = out.device_ptr_mut(&stream);
                    let (alpha, beta) = (1f32, if i == 0 { 0f32 } else { 1f32 });
                    // Row-major out[rows, cols] is column-major [cols, rows]: out = op(w)ᵀ-side first.
                    let (transa, lda) = if *transposed {
                        (bsys::cublasOperation_t::CUBLAS_OP_T, k)
                    } else {
                        (bsys::cublasOperation_t::CUBLAS_OP_N, cols)
                    };
                    unsafe {
                        blas::gemm_ex(
                            *handle.handle(),
                            transa,
                            bsys::cublasOperation_t::CUBLAS_OP_N,
                            cols as i32,
                            rows as i32,
                            k as i32,
                            (&alpha) as *const f32 as *const _,
                            wp as *const _,
                            cuda_dt,
                            lda as i32,
                            xp as *const _,
                            cuda_dt,
                            k as i32,
                            (&beta) as *const f32 as *const _,
                            op as *mut _,
                            cuda_dt,
                            cols as i32,
                            bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                            bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
                        )
                    }
                    .map_err(|e| candle_core::Error::Msg(format!("matmul_sum: cuBLAS {e:?}")))?;
                }
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = if dt == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, Shape::from((rows, cols))))
    }

    pub fn swap12(
        x: &CudaStorage,
        xl: &Layout,
        c: &CudaStorage,
        cl: &Layout,
        s: &CudaStorage,
        sl: &Layout,
        pos_axis: usize,
        sign: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, p, q, d) = xl.shape().dims4()?;
        if d % 2 != 0 {
            candle_core::bail!("swap12: odd head dim {d}")
        }
        if pos_axis > 0 {
            let positions = if pos_axis == 1 { p } else { q };
            let want = [positions, d / 2];
            if cl.dims().len() != 2
                || cl.dims()[0] < positions
                || cl.dims()[1] != d / 2
                || cl.shape() != sl.shape()
                || c.dtype() != x.dtype()
            {
                candle_core::bail!(
                    "swap12: rope tables {:?}/{:?} {:?} for {want:?}",
                    cl.shape(),
                    sl.shape(),
                    c.dtype()
                )
            }
        }
        let dev = x.device().clone();
        let n = b * p * q * d;
        let func = dev.get_or_load_custom_func(&format!("swap12_{}", suffix(x.dtype())?), MODULE, ptx()?)?;
        let (p_i, q_i, d_i, pa, pairs) = (p as i32, q as i32, d as i32, pos_axis as i32, (n / 2) as i64);
        macro_rules! go {
            ($ty:ty) => {{
                let (xv, cv, sv) = (view!(x, xl, $ty), view!(c, cl, $ty), view!(s, sl, $ty));
                let y = unsafe { dev.alloc::<$ty>(n)? };
                let mut bl = func.builder();
                bl.arg(&xv);
                bl.arg(&y);
                bl.arg(&cv);
                bl.arg(&sv);
                bl.arg(&p_i);
                bl.arg(&q_i);
                bl.arg(&d_i);
                bl.arg(&pa);
                bl.arg(&sign);
                bl.arg(&pairs);
                unsafe { bl.launch(flat(n / 2)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if x.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, Shape::from((b, q, p, d))))
    }

    pub fn swiglu(
        g: &CudaStorage,
        gl: &Layout,
        u: &CudaStorage,
        ul: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        same_shape("swiglu", gl, ul)?;
        let dev = g.device().clone();
        let n = gl.shape().elem_count();
        let func =
            dev.get_or_load_custom_func(&format!("swiglu_fwd_{}", suffix(g.dtype())?), MODULE, ptx()?)?;
        let n_i = n as i64;
        let vec = i32::from(aligned8(gl) && aligned8(ul));
        macro_rules! go {
            ($ty:ty) => {{
                let (gv, uv) = (view!(g, gl, $ty), view!(u, ul, $ty));
                let y = unsafe { dev.alloc::<$ty>(n)? };
                let mut b = func.builder();
                b.arg(&gv);
                b.arg(&uv);
                b.arg(&y);
                b.arg(&n_i);
                b.arg(&vec);
                unsafe { b.launch(flat(n.div_ceil(8))) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if g.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, gl.shape().clone()))
    }

    pub fn swiglu_bwd(
        g: &CudaStorage,
        gl: &Layout,
        u: &CudaStorage,
        ul: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        same_shape("swiglu backward", gl, ul)?;
        same_shape("swiglu backward", gl, dyl)?;
        let dev = g.device().clone();
        let n = gl.shape().elem_count();
        let func =
            dev.get_or_load_custom_func(&format!("swiglu_bwd_{}", suffix(g.dtype())?), MODULE, ptx()?)?;
        let n_i = n as i64;
        let vec = i32::from(aligned8(gl) && aligned8(ul) && aligned8(dyl));
        macro_rules! go {
            ($ty:ty) => {{
                let (gv, uv, dv) = (view!(g, gl, $ty), view!(u, ul, $ty), view!(dy, dyl, $ty));
                let y = unsafe { dev.alloc::<$ty>(2 * n)? };
                let mut b = func.builder();
                b.arg(&gv);
                b.arg(&uv);
                b.arg(&dv);
                b.arg(&y);
                b.arg(&n_i);
                b.arg(&vec);
                unsafe { b.launch(flat(n.div_ceil(8))) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if g.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        let mut dims = vec![2];
        dims.extend_from_slice(gl.dims());
        Ok((out, Shape::from(dims)))
    }

    pub fn rms_norm_bwd(
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
        eps: f32,
    ) -> Result<(CudaStorage, Shape)> {
        same_shape("rms_norm backward", xl, dyl)?;
        let dev = x.device().clone();
        let (rows, cols) = rows_cols(xl)?;
        if wl.shape().elem_count() != cols || w.dtype() != x.dtype() {
            candle_core::bail!(
                "rms_norm backward: weight {:?} {:?} for rows of {cols} {:?}",
                wl.shape(),
                w.dtype(),
                x.dtype()
            )
        }
        let func =
            dev.get_or_load_custom_func(&format!("rms_norm_bwd_{}", suffix(x.dtype())?), MODULE, ptx()?)?;
        let cols_i = cols as i32;
        macro_rules! go {
            ($ty:ty) => {{
                let (xv, wv, dv) = (view!(x, xl, $ty), view!(w, wl, $ty), view!(dy, dyl, $ty));
                let y = unsafe { dev.alloc::<$ty>(rows * cols)? };
                let mut b = func.builder();
                b.arg(&xv);
                b.arg(&wv);
                b.arg(&dv);
                b.arg(&y);
                b.arg(&cols_i);
                b.arg(&eps);
                unsafe { b.launch(cfg(rows, row_threads(cols).min(512))) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if x.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, xl.shape().clone()))
    }

    pub fn causal_softmax(s: &CudaStorage, l: &Layout, t: usize, scale: f32) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let (rows, cols) = rows_cols(l)?;
        let vec = cols % 8 == 0 && cols <= 8 * 1024 && aligned8(l);
        let kind = if vec { "causal_softmax_v" } else { "causal_softmax" };
        let threads = if vec { (cols / 8).next_multiple_of(32) as u32 } else { row_threads(cols) };
        let func = dev.get_or_load_custom_func(&format!("{kind}_{}", suffix(s.dtype())?), MODULE, ptx()?)?;
        let (t, cols_i) = (t as i32, cols as i32);
        macro_rules! go {
            ($ty:ty) => {{
                let x = view!(s, l, $ty);
                let y = unsafe { dev.alloc::<$ty>(rows * cols)? };
                let mut b = func.builder();
                b.arg(&x);
                b.arg(&y);
                b.arg(&t);
                b.arg(&cols_i);
                b.arg(&scale);
                unsafe { b.launch(cfg(rows, threads)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if s.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, l.shape().clone()))
    }

    pub fn causal_softmax_bwd(
        p: &CudaStorage,
        pl: &Layout,
        dp: &CudaStorage,
        dpl: &Layout,
        t: usize,
        scale: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = p.device().clone();
        let (rows, cols) = rows_cols(pl)?;
        if pl.shape() != dpl.shape() || p.dtype() != dp.dtype() {
            candle_core::bail!("causal softmax backward: p {:?} and dp {:?} differ", pl.shape(), dpl.shape())
        }
        let vec = cols % 8 == 0 && cols <= 8 * 1024 && aligned8(pl) && aligned8(dpl);
        let kind = if vec { "causal_softmax_bwd_v" } else { "causal_softmax_bwd" };
        let threads = if vec { (cols / 8).next_multiple_of(32) as u32 } else { row_threads(cols) };
        let func = dev.get_or_load_custom_func(&format!("{kind}_{}", suffix(p.dtype())?), MODULE, ptx()?)?;
        let (t, cols_i) = (t as i32, cols as i32);
        macro_rules! go {
            ($ty:ty) => {{
                let pv = view!(p, pl, $ty);
                let dv = view!(dp, dpl, $ty);
                let y = unsafe { dev.alloc::<$ty>(rows * cols)? };
                let mut b = func.builder();
                b.arg(&pv);
                b.arg(&dv);
                b.arg(&y);
                b.arg(&t);
                b.arg(&cols_i);
                b.arg(&scale);
                unsafe { b.launch(cfg(rows, threads)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if p.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, pl.shape().clone()))
    }

    pub fn ce_fwd(
        x: &CudaStorage,
        xl: &Layout,
        t: &CudaStorage,
        tl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (rows, cols) = rows_cols(xl)?;
        if tl.shape().elem_count() != rows {
            candle_core::bail!("cross-entropy: {} targets for {rows} rows", tl.shape().elem_count())
        }
        let func = dev.get_or_load_custom_func(&format!("ce_fwd_{}", suffix(x.dtype())?), MODULE, ptx()?)?;
        let tv = view!(t, tl, u32);
        let stats = unsafe { dev.alloc::<f32>(rows * 2)? };
        let v = cols as i32;
        let vec = i32::from(cols % 8 == 0 && aligned8(xl));
        macro_rules! go {
            ($ty:ty) => {{
                let xv = view!(x, xl, $ty);
                let mut b = func.builder();
                b.arg(&xv);
                b.arg(&tv);
                b.arg(&stats);
                b.arg(&v);
                b.arg(&vec);
                unsafe { b.launch(cfg(rows, 1024)) }.w()?;
            }};
        }
        if x.dtype() == DType::BF16 {
            go!(bf16)
        } else {
            go!(f32)
        }
        Ok((CudaStorage::wrap_cuda_slice(stats, dev.clone()), Shape::from((rows, 2))))
    }

    pub fn ce_bwd(
        x: &CudaStorage,
        xl: &Layout,
        t: &CudaStorage,
        tl: &Layout,
        s: &CudaStorage,
        sl: &Layout,
        g: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (rows, cols) = rows_cols(xl)?;
        if tl.shape().elem_count() != rows || sl.shape().elem_count() != rows * 2 {
            candle_core::bail!(
                "cross-entropy backward: shapes {:?} {:?} {:?}",
                xl.shape(),
                tl.shape(),
                sl.shape()
            )
        }
        let func = dev.get_or_load_custom_func(&format!("ce_bwd_{}", suffix(x.dtype())?), MODULE, ptx()?)?;
        let tv = view!(t, tl, u32);
        let sv = view!(s, sl, f32);
        let v = cols as i32;
        let vec = i32::from(cols % 8 == 0 && aligned8(xl));
        macro_rules! go {
            ($ty:ty) => {{
                let xv = view!(x, xl, $ty);
                let y = unsafe { dev.alloc::<$ty>(rows * cols)? };
                let mut b = func.builder();
                b.arg(&xv);
                b.arg(&tv);
                b.arg(&sv);
                b.arg(&y);
                b.arg(&v);
                b.arg(&g);
                b.arg(&vec);
                unsafe { b.launch(cfg(rows, 1024)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if x.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, xl.shape().clone()))
    }
}
