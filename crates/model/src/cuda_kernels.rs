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

/// Whether the fused kernels run on `t`'s device (a CUDA device in a CUDA build, f32 or bf16).
pub fn available(t: &Tensor) -> bool {
    cfg!(feature = "cuda") && t.device().is_cuda() && matches!(t.dtype(), candle_core::DType::BF16 | candle_core::DType::F32)
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
    logits.contiguous()?.apply_op3_no_bwd(&targets.contiguous()?, &stats.contiguous()?, &CrossEntropyBwd { g: g as f32 })
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
/// A dropout mask shaped like `x` in its dtype: `1/keep` where a counter-based hash of
/// (`seed`, element index) falls below `keep`, else 0 — one kernel, deterministic for a seed.
pub fn dropout_mask(x: &Tensor, seed: u64, keep: f64) -> Result<Tensor> {
    x.apply_op1_no_bwd(&DropoutMask { seed, keep: keep as f32 })
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct DropoutMask {
    seed: u64,
    keep: f32,
}

impl CustomOp1 for DropoutMask {
    fn name(&self) -> &'static str {
        "ft-dropout-mask"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        imp::dropout_mask(s, l, self.seed, self.keep)
    }
}

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

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "ft-causal-softmax"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        imp::causal_softmax(s, l, self.t, self.scale)
    }
}

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "ft-causal-softmax-bwd"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        p: &candle_core::CudaStorage,
        pl: &Layout,
        dp: &candle_core::CudaStorage,
        dpl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        imp::causal_softmax_bwd(p, pl, dp, dpl, self.t, self.scale)
    }
}

impl CustomOp2 for CrossEntropyFwd {
    fn name(&self) -> &'static str {
        "ft-cross-entropy"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        t: &candle_core::CudaStorage,
        tl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        imp::ce_fwd(x, xl, t, tl)
    }
}

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "ft-cross-entropy-bwd"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        t: &candle_core::CudaStorage,
        tl: &Layout,
        s: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        imp::ce_bwd(x, xl, t, tl, s, sl, self.g)
    }
}

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
template <typename T>
__device__ void causal_softmax(const T* x, T* y, int t, int cols, float scale) {
  __shared__ float sh[32];
  long row = blockIdx.x;
  int q = (int)(row % t);
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  float m = neg_inf();
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
  for (int j = threadIdx.x; j <= q; j += blockDim.x) dot += ld(pr, j) * ld(dr, j);
  dot = block_sum(dot, sh);
  for (int j = threadIdx.x; j < cols; j += blockDim.x) st(out, j, j <= q ? scale * ld(pr, j) * (ld(dr, j) - dot) : 0.f);
}
template <typename T>
__device__ void ce_fwd(const T* logits, const unsigned int* targets, float* stats, int v) {
  __shared__ float sh[32];
  long row = blockIdx.x;
  const T* lr = logits + row * v;
  float m = neg_inf();
  for (int j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, ld(lr, j));
  m = block_max(m, sh);
  float s = 0.f;
  for (int j = threadIdx.x; j < v; j += blockDim.x) s += __expf(ld(lr, j) - m);
  s = block_sum(s, sh);
  if (threadIdx.x == 0) {
    float lse = m + logf(s);
    stats[2 * row] = lse - ld(lr, targets[row]);
    stats[2 * row + 1] = lse;
  }
}
template <typename T>
__device__ void ce_bwd(const T* logits, const unsigned int* targets, const float* stats, T* dl, int v, float g) {
  long row = blockIdx.x;
  const T* lr = logits + row * v;
  T* out = dl + row * v;
  float lse = stats[2 * row + 1];
  unsigned int tg = targets[row];
  for (int j = threadIdx.x; j < v; j += blockDim.x) st(out, j, (__expf(ld(lr, j) - lse) - (j == (int)tg ? 1.f : 0.f)) * g);
}
template <typename T>
__device__ void dropout_mask(T* out, long n, unsigned long long seed, float keep) {
  long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  unsigned long long z = seed + (unsigned long long)i * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  float u = (float)(z >> 40) * (1.0f / 16777216.0f);
  st(out, i, u < keep ? 1.0f / keep : 0.f);
}
#define KERNELS(T, S) \
extern "C" __global__ void dropout_mask_##S(T* out, long n, unsigned long long seed, float keep) { dropout_mask(out, n, seed, keep); } \
extern "C" __global__ void causal_softmax_##S(const T* x, T* y, int t, int cols, float scale) { causal_softmax(x, y, t, cols, scale); } \
extern "C" __global__ void causal_softmax_bwd_##S(const T* p, const T* dp, T* ds, int t, int cols, float scale) { causal_softmax_bwd(p, dp, ds, t, cols, scale); } \
extern "C" __global__ void ce_fwd_##S(const T* l, const unsigned int* tg, float* st_, int v) { ce_fwd(l, tg, st_, v); } \
extern "C" __global__ void ce_bwd_##S(const T* l, const unsigned int* tg, const float* st_, T* dl, int v, float g) { ce_bwd(l, tg, st_, dl, v, g); }
KERNELS(float, f32)
KERNELS(bf16_t, bf16)
"#;

    const MODULE: &str = "ferrotune_rows";

    fn ptx() -> Result<&'static str> {
        static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
        let r = PTX.get_or_init(|| {
            candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SRC).map(|p| p.to_src()).map_err(|e| format!("{e:?}"))
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
            let (a, b) = $l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("input not contiguous".into()))?;
            $s.as_cuda_slice::<$t>()?.slice(a..b)
        }};
    }

    pub fn dropout_mask(s: &CudaStorage, l: &Layout, seed: u64, keep: f32) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let n = l.shape().elem_count();
        let func = dev.get_or_load_custom_func(&format!("dropout_mask_{}", suffix(s.dtype())?), MODULE, ptx()?)?;
        let n_i = n as i64;
        let cfg = LaunchConfig { grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        macro_rules! go {
            ($ty:ty) => {{
                let y = unsafe { dev.alloc::<$ty>(n)? };
                let mut b = func.builder();
                b.arg(&y);
                b.arg(&n_i);
                b.arg(&seed);
                b.arg(&keep);
                unsafe { b.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if s.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, l.shape().clone()))
    }

    pub fn causal_softmax(s: &CudaStorage, l: &Layout, t: usize, scale: f32) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let (rows, cols) = rows_cols(l)?;
        let func = dev.get_or_load_custom_func(&format!("causal_softmax_{}", suffix(s.dtype())?), MODULE, ptx()?)?;
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
                unsafe { b.launch(cfg(rows, 256)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if s.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, l.shape().clone()))
    }

    pub fn causal_softmax_bwd(p: &CudaStorage, pl: &Layout, dp: &CudaStorage, dpl: &Layout, t: usize, scale: f32) -> Result<(CudaStorage, Shape)> {
        let dev = p.device().clone();
        let (rows, cols) = rows_cols(pl)?;
        if pl.shape() != dpl.shape() || p.dtype() != dp.dtype() {
            candle_core::bail!("causal softmax backward: p {:?} and dp {:?} differ", pl.shape(), dpl.shape())
        }
        let func = dev.get_or_load_custom_func(&format!("causal_softmax_bwd_{}", suffix(p.dtype())?), MODULE, ptx()?)?;
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
                unsafe { b.launch(cfg(rows, 256)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if p.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, pl.shape().clone()))
    }

    pub fn ce_fwd(x: &CudaStorage, xl: &Layout, t: &CudaStorage, tl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (rows, cols) = rows_cols(xl)?;
        if tl.shape().elem_count() != rows {
            candle_core::bail!("cross-entropy: {} targets for {rows} rows", tl.shape().elem_count())
        }
        let func = dev.get_or_load_custom_func(&format!("ce_fwd_{}", suffix(x.dtype())?), MODULE, ptx()?)?;
        let tv = view!(t, tl, u32);
        let stats = unsafe { dev.alloc::<f32>(rows * 2)? };
        let v = cols as i32;
        macro_rules! go {
            ($ty:ty) => {{
                let xv = view!(x, xl, $ty);
                let mut b = func.builder();
                b.arg(&xv);
                b.arg(&tv);
                b.arg(&stats);
                b.arg(&v);
                unsafe { b.launch(cfg(rows, 1024)) }.w()?;
            }};
        }
        if x.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) }
        Ok((CudaStorage::wrap_cuda_slice(stats, dev.clone()), Shape::from((rows, 2))))
    }

    pub fn ce_bwd(x: &CudaStorage, xl: &Layout, t: &CudaStorage, tl: &Layout, s: &CudaStorage, sl: &Layout, g: f32) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (rows, cols) = rows_cols(xl)?;
        if tl.shape().elem_count() != rows || sl.shape().elem_count() != rows * 2 {
            candle_core::bail!("cross-entropy backward: shapes {:?} {:?} {:?}", xl.shape(), tl.shape(), sl.shape())
        }
        let func = dev.get_or_load_custom_func(&format!("ce_bwd_{}", suffix(x.dtype())?), MODULE, ptx()?)?;
        let tv = view!(t, tl, u32);
        let sv = view!(s, sl, f32);
        let v = cols as i32;
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
                unsafe { b.launch(cfg(rows, 1024)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let out = if x.dtype() == DType::BF16 { go!(bf16) } else { go!(f32) };
        Ok((out, xl.shape().clone()))
    }
}
