use candle_core::{Device, Tensor};
use ferrotune_model::{Logits, WeightMode, load_path};
fn main() -> anyhow::Result<()> {
    let p = std::env::args().nth(1).unwrap();
    let path = std::path::Path::new(&p);
    let f = load_path(path, WeightMode::F32, &Device::Cpu)?;
    let q = load_path(path, WeightMode::Quantized, &Device::Cpu)?;
    let text = f.render_chat(&[ferrotune_model::Message::new("user", "What is the capital of France?")], true)?;
    let ids = f.tokenizer.encode(&text, false)?;
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    for k in [1usize, 2, 4, 8, 16, 30] {
        let mut fm = f.model.clone();
        let mut qm = q.model.clone();
        fm.layers.truncate(k);
        qm.layers.truncate(k);
        let a = fm.forward(&x, None, None, Logits::All)?;
        let b = qm.forward(&x, None, None, Logits::All)?;
        let d = (&a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let s = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let am = a.argmax(2)?.flatten_all()?.to_vec1::<u32>()?;
        let bm = b.argmax(2)?.flatten_all()?.to_vec1::<u32>()?;
        let agree = am.iter().zip(&bm).filter(|(x, y)| x == y).count();
        println!("layers={k} maxdiff {d} scale {s} top1 agree {agree}/{}", am.len());
    }
    for m in [&f, &q] {
        let all = m.model.forward(&x, None, None, Logits::All)?;
        let last_all = all.get(0)?.get(ids.len() - 1)?;
        let last = m.model.forward(&x, None, None, Logits::Last)?.get(0)?;
        let mut cache = ferrotune_model::KvCache::new(m.config(), 64);
        let cached = m.model.forward(&x, None, Some(&mut cache), Logits::Last)?.get(0)?;
        let d1 = (&last_all - &last)?.abs()?.max(0)?.to_scalar::<f32>()?;
        let d2 = (&last_all - &cached)?.abs()?.max(0)?.to_scalar::<f32>()?;
        println!("last vs all {d1}, cached vs all {d2}, argmax {} {} {}", last_all.argmax(0)?.to_scalar::<u32>()?, last.argmax(0)?.to_scalar::<u32>()?, cached.argmax(0)?.to_scalar::<u32>()?);
    }
    Ok(())
}
