//! Attention for a batched decode step (one new token for each of `b` independent sequences,
//! each with its own KV cache of its own length) in one call, on the CPU.
//!
//! Composed from candle ops, each row costs ~6 small ops a layer (narrow, `q·Kᵀ`, scale,
//! softmax, `p·V`, reshape) plus a concatenation: at 32 rows × 30 layers that is ~6000 dispatches
//! a step, about a third of a SmolLM2 step at 32 rows. Here every row's keys and values are read
//! in place from its cache buffer, the `rep` query heads that share a KV head (GQA) are served by
//! one pass over that head's keys, and the (row, KV head) items run in parallel on rayon.

use candle_core::{DType, Device, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// `softmax(scale · q·Kᵀ)·V` per row. `q: [b, heads, d]` (any layout); `kv[r]` = row `r`'s keys
/// and values, `[1, kv_heads, total_r, d]` each (views of the cache are fine as long as the last
/// dim is contiguous), every position visible. `heads` must be a multiple of `kv_heads`; query
/// head `h` reads KV head `h / (heads / kv_heads)`. Returns `[b, heads · d]`. CPU f32 only.
pub fn attend_rows(q: &Tensor, kv: &[(Tensor, Tensor)], scale: f32) -> Result<Tensor> {
    let (b, heads, d) = q.dims3()?;
    if kv.len() != b {
        candle_core::bail!("batched attention: {b} query rows for {} caches", kv.len())
    }
    if !q.device().is_cpu() || q.dtype() != DType::F32 {
        candle_core::bail!(
            "batched attention runs on the CPU in f32 (got {:?} on {:?})",
            q.dtype(),
            q.device()
        )
    }
    let qv: Vec<f32> = q.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; b * heads * d];
    out.par_chunks_mut(heads * d).zip(qv.par_chunks(heads * d)).zip(kv.par_iter()).try_for_each(
        |((o, q), (k, v))| -> Result<()> {
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let kview = View::new(&ks, kl, d, "keys")?;
            let vview = View::new(&vs, vl, d, "values")?;
            if kview.heads != vview.heads || kview.len != vview.len {
                candle_core::bail!(
                    "batched attention: keys {:?} and values {:?} differ",
                    kl.dims(),
                    vl.dims()
                )
            }
            if kview.heads == 0 || heads % kview.heads != 0 {
                candle_core::bail!("batched attention: {heads} query heads over {} KV heads", kview.heads)
            }
            let rep = heads / kview.heads;
            let mut scores = vec![0f32; kview.len];
            for kh in 0..kview.heads {
                for r in 0..rep {
                    let h = kh * rep + r;
                    attend_head(
                        &q[h * d..(h + 1) * d],
                        &kview,
                        &vview,
                        kh,
                        scale,
                        &mut scores,
                        &mut o[h * d..(h + 1) * d],
                    );
                }
            }
            Ok(())
        },
    )?;
    Tensor::from_vec(out, (b, heads * d), &Device::Cpu)
}

/// A `[1, heads, len, d]` view into a CPU f32 buffer whose last dim is contiguous.
struct View<'a> {
    data: &'a [f32],
    start: usize,
    head_stride: usize,
    row_stride: usize,
    heads: usize,
    len: usize,
    d: usize,
}

impl<'a> View<'a> {
    fn new(storage: &'a Storage, layout: &Layout, d: usize, what: &str) -> Result<Self> {
        let Storage::Cpu(cpu) = storage else {
            candle_core::bail!("batched attention: {what} are not on the CPU")
        };
        let data = cpu.as_slice::<f32>()?;
        let dims = layout.dims();
        let st = layout.stride();
        if dims.len() != 4 || dims[0] != 1 || dims[3] != d || (st[3] != 1 && d > 1) {
            candle_core::bail!(
                "batched attention: {what} {dims:?} (strides {st:?}) is not [1, kv_heads, len, {d}] with contiguous rows"
            )
        }
        let (heads, len) = (dims[1], dims[2]);
        let start = layout.start_offset();
        // The last element any index can reach must be inside the buffer.
        if heads > 0 && len > 0 && start + (heads - 1) * st[1] + (len - 1) * st[2] + d > data.len() {
            candle_core::bail!("batched attention: {what} view runs past its buffer")
        }
        Ok(Self { data, start, head_stride: st[1], row_stride: st[2], heads, len, d })
    }

    fn row(&self, head: usize, pos: usize) -> &'a [f32] {
        let o = self.start + head * self.head_stride + pos * self.row_stride;
        &self.data[o..o + self.d]
    }
}

/// One query head against KV head `kh`: `out = Σ_j softmax(scale·q·k_j)_j · v_j`.
fn attend_head(q: &[f32], k: &View, v: &View, kh: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores.iter_mut().enumerate() {
        *s = dot(q, k.row(kh, j)) * scale;
        max = max.max(*s);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        axpy(p, v.row(kh, j), out);
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Dot product with 8 independent accumulators (vectorises without reassociation licence).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *a = x.mul_add(y, *a);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out += p · v`.
fn axpy(p: f32, v: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o = p.mul_add(x, *o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The composed candle form for one row: `[1, kvh, rep, d]` queries against `[1, kvh, t, d]`.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, kvh: usize, scale: f64) -> Result<Tensor> {
        let (_, heads, d) = q.dims3()?;
        let q = q.reshape((1, kvh, heads / kvh, d))?;
        let att = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
        att.matmul(v)?.reshape((1, heads * d))
    }

    #[test]
    fn matches_composed_attention_per_row_on_cache_views() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, kvh, d) = (6, 2, 20);
        let lens = [1usize, 7, 33];
        let q = Tensor::randn(0f32, 1.0, (lens.len(), heads, d), &dev)?;
        let mut kv = Vec::new();
        for &t in &lens {
            // As the cache holds them: a larger buffer, narrowed to the filled positions.
            let kb = Tensor::randn(0f32, 1.0, (1, kvh, t + 5, d), &dev)?;
            let vb = Tensor::randn(0f32, 1.0, (1, kvh, t + 5, d), &dev)?;
            kv.push((kb.narrow(2, 2, t)?, vb.narrow(2, 2, t)?));
        }
        let scale = 1.0 / (d as f64).sqrt();
        let got = attend_rows(&q, &kv, scale as f32)?;
        assert_eq!(got.dims(), &[lens.len(), heads * d]);
        for (r, (k, v)) in kv.iter().enumerate() {
            let want = reference(&q.narrow(0, r, 1)?, &k.contiguous()?, &v.contiguous()?, kvh, scale)?;
            let diff = (got.narrow(0, r, 1)? - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "row {r}: max difference {diff}");
        }
        Ok(())
    }

    #[test]
    fn refuses_mismatched_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 4, 8), DType::F32, &dev)?;
        let k = Tensor::zeros((1, 2, 3, 8), DType::F32, &dev)?;
        // One cache for two rows.
        assert!(attend_rows(&q, &[(k.clone(), k.clone())], 1.0).is_err());
        // Head size differs.
        let k5 = Tensor::zeros((1, 2, 3, 5), DType::F32, &dev)?;
        assert!(attend_rows(&q, &[(k5.clone(), k5.clone()), (k5.clone(), k5)], 1.0).is_err());
        // 4 query heads over 3 KV heads.
        let k3 = Tensor::zeros((1, 3, 3, 8), DType::F32, &dev)?;
        assert!(attend_rows(&q, &[(k3.clone(), k3.clone()), (k3.clone(), k3)], 1.0).is_err());
        Ok(())
    }
}
