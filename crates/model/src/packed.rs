//! A frozen f32 weight pre-packed for products with few activation rows (a serving engine's
//! batched decode step: 1–64 rows), on the CPU.
//!
//! gemm packs its weight operand into column panels on every call. At 32 rows that repacking
//! reads and writes every weight of the model once per decode step — measured at ~30–37% of a
//! SmolLM2 step, more than a third of the arithmetic — plus a barrier across threads per call.
//! Here the weight `W: [out, in]` is packed once, at load: panels of [`NR`] output features, each
//! stored k-major (`panel[k][j] = W[p·NR + j][k]`, the last panel zero-padded). A product walks
//! the panels (in parallel on rayon) and, for each, streams it once per block of [`MR`] rows while
//! the accumulators stay in registers; the activations stay in cache across panels.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// Output features per panel (two 8-lane vectors).
pub const NR: usize = 16;
/// Activation rows per micro-kernel call.
pub const MR: usize = 4;
/// Activation rows per pass over the panels (bounds the activation block kept in cache).
const ROW_BLOCK: usize = 64;
/// Panels per parallel work item.
const PANELS_PER_TASK: usize = 4;

#[derive(Debug)]
pub struct PackedF32 {
    panels: Vec<f32>,
    out: usize,
    inp: usize,
}

impl PackedF32 {
    /// Pack a `[out, in]` weight (any float dtype, any layout; values converted to f32).
    pub fn from_dense(w: &Tensor) -> Result<Self> {
        let (out, inp) = w.dims2()?;
        // One flat buffer (not a Vec per row: thousands of small frees leave the heap fragmented
        // and the process's memory high after packing a whole model).
        let flat: Vec<f32> = w.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        let n_panels = out.div_ceil(NR);
        let mut panels = vec![0f32; n_panels * inp * NR];
        for (p, panel) in panels.chunks_exact_mut(inp * NR).enumerate() {
            for (j, row) in flat.chunks_exact(inp.max(1)).skip(p * NR).take(NR).enumerate() {
                for (k, &v) in row.iter().enumerate() {
                    panel[k * NR + j] = v;
                }
            }
        }
        Ok(Self { panels, out, inp })
    }

    pub fn out_features(&self) -> usize {
        self.out
    }

    pub fn in_features(&self) -> usize {
        self.inp
    }

    /// The weight back as a dense `[out, in]` f32 tensor.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let mut w = vec![0f32; self.out * self.inp];
        for (o, row) in w.chunks_exact_mut(self.inp).enumerate() {
            let panel = &self.panels[(o / NR) * self.inp * NR..][..self.inp * NR];
            for (k, v) in row.iter_mut().enumerate() {
                *v = panel[k * NR + o % NR];
            }
        }
        Tensor::from_vec(w, (self.out, self.inp), device)
    }

    /// `x: [.., in]` (f32, CPU) → `x·Wᵀ: [.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.last() != Some(&self.inp) {
            candle_core::bail!("packed linear: input {dims:?} does not end in {}", self.inp)
        }
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            candle_core::bail!(
                "packed linear runs on the CPU in f32 (got {:?} on {:?})",
                x.dtype(),
                x.device()
            )
        }
        let m = x.elem_count() / self.inp.max(1);
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut y = vec![0f32; m * self.out];
        for (xb, yb) in xs.chunks(ROW_BLOCK * self.inp).zip(y.chunks_mut(ROW_BLOCK * self.out)) {
            self.block(xb, yb);
        }
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.out;
        }
        Tensor::from_vec(y, out_dims, x.device())
    }

    /// One block of at most ROW_BLOCK rows: `x: [rows, in]` → `y: [rows, out]`.
    fn block(&self, x: &[f32], y: &mut [f32]) {
        let (inp, out) = (self.inp, self.out);
        let rows = x.len() / inp.max(1);
        if rows == 0 || out == 0 {
            return;
        }
        // Each task computes a `[rows, PANELS_PER_TASK·NR]` tile; tiles are then copied into `y`.
        let tiles: Vec<(usize, Vec<f32>)> = self
            .panels
            .par_chunks(PANELS_PER_TASK * inp * NR)
            .enumerate()
            .map(|(t, group)| {
                let cols = group.len() / inp.max(1);
                let mut tile = vec![0f32; rows * cols];
                for (pi, panel) in group.chunks_exact(inp * NR).enumerate() {
                    let mut r = 0;
                    while r + MR <= rows {
                        let acc = kernel::<MR>(
                            panel,
                            std::array::from_fn(|i| &x[(r + i) * inp..(r + i + 1) * inp]),
                        );
                        store(&acc, &mut tile, r, cols, pi * NR);
                        r += MR;
                    }
                    match rows - r {
                        1 => store(
                            &kernel::<1>(panel, [&x[r * inp..(r + 1) * inp]]),
                            &mut tile,
                            r,
                            cols,
                            pi * NR,
                        ),
                        2 => store(
                            &kernel::<2>(
                                panel,
                                std::array::from_fn(|i| &x[(r + i) * inp..(r + i + 1) * inp]),
                            ),
                            &mut tile,
                            r,
                            cols,
                            pi * NR,
                        ),
                        3 => store(
                            &kernel::<3>(
                                panel,
                                std::array::from_fn(|i| &x[(r + i) * inp..(r + i + 1) * inp]),
                            ),
                            &mut tile,
                            r,
                            cols,
                            pi * NR,
                        ),
                        _ => {}
                    }
                }
                (t * PANELS_PER_TASK * NR, tile)
            })
            .collect();
        for (col0, tile) in tiles {
            let cols = tile.len() / rows;
            let take = cols.min(out - col0);
            for (r, trow) in tile.chunks_exact(cols).enumerate() {
                y[r * out + col0..r * out + col0 + take].copy_from_slice(&trow[..take]);
            }
        }
    }
}

/// `R` rows against one panel: `acc[r][j] = Σ_k x[r][k] · panel[k][j]`.
#[inline(always)]
fn kernel<const R: usize>(panel: &[f32], x: [&[f32]; R]) -> [[f32; NR]; R] {
    let mut acc = [[0f32; NR]; R];
    for (k, w) in panel.chunks_exact(NR).enumerate() {
        for (a, xr) in acc.iter_mut().zip(x.iter()) {
            let xv = xr[k];
            for (aj, &wj) in a.iter_mut().zip(w) {
                *aj = xv.mul_add(wj, *aj);
            }
        }
    }
    acc
}

fn store<const R: usize>(acc: &[[f32; NR]; R], tile: &mut [f32], r0: usize, cols: usize, c0: usize) {
    for (i, a) in acc.iter().enumerate() {
        tile[(r0 + i) * cols + c0..(r0 + i) * cols + c0 + NR].copy_from_slice(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_matmul_for_every_row_count_and_ragged_output() -> Result<()> {
        let dev = Device::Cpu;
        // 37 outputs: two full panels and a ragged third; PANELS_PER_TASK groups end ragged too.
        for (out, inp) in [(37usize, 19usize), (5, 8), (16 * PANELS_PER_TASK + 3, 24)] {
            let w = Tensor::randn(0f32, 1.0, (out, inp), &dev)?;
            let p = PackedF32::from_dense(&w)?;
            assert_eq!(p.dequantize(&dev)?.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
            // 1..=9 rows cover every micro-kernel tail; 70 crosses a row block.
            for rows in (1..=9).chain([70]) {
                let x = Tensor::randn(0f32, 1.0, (rows, 1, inp), &dev)?;
                let got = p.forward(&x)?;
                assert_eq!(got.dims(), &[rows, 1, out]);
                let want = x.reshape((rows, inp))?.matmul(&w.t()?)?.reshape((rows, 1, out))?;
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "out {out} in {inp} rows {rows}: max difference {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn refuses_a_wrong_input_width() -> Result<()> {
        let dev = Device::Cpu;
        let p = PackedF32::from_dense(&Tensor::zeros((4, 6), DType::F32, &dev)?)?;
        assert!(p.forward(&Tensor::zeros((2, 5), DType::F32, &dev)?).is_err());
        Ok(())
    }
}
