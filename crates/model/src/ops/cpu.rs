//! What the ops' CPU bodies share: f32 kernels for LoRA training on the CPU that write each result once, into a buffer handed to
//! the graph without a copy.
//!
//! Through candle's API a LoRA projection `x·Wᵀ + (x·Aᵀ)·Bᵀ` costs, besides the two products,
//! a zero-fill of each product's output, the adapter's `[n, out]` product written out, and an add
//! that reads both and writes a third buffer (and backward the same again, plus a dropout pass);
//! SwiGLU is two passes forward and about ten backward. Here the gemm crate (candle's own CPU
//! matmul) is called directly: the frozen product is written into fresh memory, the adapter's
//! product accumulated onto it (`dst += lhs·rhs`, a rank-r product), and SwiGLU forward and
//! backward are one vectorised pass each. Profiled on a SmolLM2 step these passes were ~15% of
//! the step.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};

/// Whether `t` can take these kernels: an f32 tensor on the CPU.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// An f32 2-D operand read in place: its elements from the layout's start, and row/column strides.
struct Operand<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

/// Reads a 2-D f32 CPU tensor's storage, calls `f` with it.
fn with_operand<R>(t: &Tensor, f: impl FnOnce(Operand<'_>) -> Result<R>) -> Result<R> {
    let (rows, cols) = t.dims2()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!(
            "cpu op: expected an f32 CPU tensor, got {:?} on {:?}",
            t.dtype(),
            t.device().location()
        )
    };
    let stride = layout.stride();
    let start = layout.start_offset();
    // The furthest element the strides reach must lie inside the storage.
    let last = start + (rows.saturating_sub(1)) * stride[0] + (cols.saturating_sub(1)) * stride[1];
    if rows > 0 && cols > 0 && last >= data.len() {
        candle_core::bail!("cpu op: layout reaches past the storage");
    }
    f(Operand { data: &data[start..], rows, cols, rs: stride[0] as isize, cs: stride[1] as isize })
}

/// `dst := (accumulate ? dst : ·) + beta · lhs·rhs` for `lhs: [m, k]`, `rhs: [k, n]` (any strides,
/// e.g. a `.t()` view) and `dst` a row-major `[m, n]` buffer. Without `accumulate` `dst` is only
/// written (it may be uninitialised memory).
///
/// # Safety
/// `dst` must point to `m·n` writable f32 (initialised when `accumulate`).
#[allow(unsafe_code)]
unsafe fn gemm_raw(dst: *mut f32, accumulate: bool, lhs: &Tensor, rhs: &Tensor, beta: f32) -> Result<()> {
    with_operand(lhs, |l| {
        with_operand(rhs, |r| {
            if l.cols != r.rows {
                candle_core::bail!("cpu op: inner dimensions {} and {} differ", l.cols, r.rows);
            }
            let threads = candle_core::utils::get_num_threads();
            let parallelism =
                if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
            // SAFETY: `l` and `r` were checked to lie inside their storages for their shapes
            // and strides; the caller promises `dst` holds `l.rows · r.cols` f32, row-major.
            unsafe {
                gemm::gemm(
                    l.rows,
                    r.cols,
                    l.cols,
                    dst,
                    1,
                    r.cols as isize,
                    accumulate,
                    l.data.as_ptr(),
                    l.cs,
                    l.rs,
                    r.data.as_ptr(),
                    r.cs,
                    r.rs,
                    1.0,
                    beta,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            Ok(())
        })
    })
}

/// `beta · lhs·rhs` (`lhs: [m, k]`, `rhs: [k, n]`, any strides) into a new row-major buffer,
/// never zero-filled.
#[allow(unsafe_code)]
pub fn product(lhs: &Tensor, rhs: &Tensor, beta: f32) -> Result<Vec<f32>> {
    let (m, n) = (lhs.dim(0)?, rhs.dim(1)?);
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the spare capacity holds m·n f32; gemm writes every one (no read: accumulate is
    // false), after which they are initialised and the length may cover them.
    unsafe {
        gemm_raw(out.spare_capacity_mut().as_mut_ptr().cast::<f32>(), false, lhs, rhs, beta)?;
        out.set_len(m * n);
    }
    Ok(out)
}

/// `dst += beta · lhs·rhs` for a row-major `[m, n]` `dst`.
#[allow(unsafe_code)]
pub(crate) fn accumulate(dst: &mut [f32], lhs: &Tensor, rhs: &Tensor, beta: f32) -> Result<()> {
    let (m, n) = (lhs.dim(0)?, rhs.dim(1)?);
    if dst.len() != m * n {
        candle_core::bail!("cpu op: accumulating a {m}×{n} product into {} elements", dst.len());
    }
    // SAFETY: `dst` is an initialised m·n slice.
    unsafe { gemm_raw(dst.as_mut_ptr(), true, lhs, rhs, beta) }
}

/// `dst += x` for an f32 CPU tensor `x` of `dst`'s element count.
pub fn add_into(dst: &mut [f32], x: &Tensor) -> Result<()> {
    if x.elem_count() != dst.len() {
        candle_core::bail!("cpu op: adding {} elements into {}", x.elem_count(), dst.len());
    }
    with_slices(&[x], |s| {
        for (d, &v) in dst.iter_mut().zip(s[0]) {
            *d += v;
        }
        Ok(())
    })
}

/// The tensors (one shape, f32 on the CPU) as contiguous slices, for `f`.
pub(crate) fn with_slices<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
    let shape = ts[0].shape();
    if let Some(t) = ts.iter().find(|t| t.shape() != shape) {
        candle_core::bail!("cpu op: shapes {:?} and {:?} differ", shape, t.shape());
    }
    let contiguous = ts.iter().map(|t| t.contiguous()).collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = contiguous.iter().map(Tensor::storage_and_layout).collect();
    let n = shape.elem_count();
    let mut slices = Vec::with_capacity(ts.len());
    for (storage, layout) in &guards {
        let Storage::Cpu(CpuStorage::F32(v)) = &**storage else {
            candle_core::bail!("cpu op: expected f32 CPU tensors")
        };
        slices.push(&v[layout.start_offset()..layout.start_offset() + n]);
    }
    f(&slices)
}
