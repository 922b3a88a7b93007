//! The loss curve of a run as an SVG (plotters, no system fonts needed for SVG).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Result, TrainError};

/// `train`: (step, loss) per logging step; `eval`: (step, eval loss).
pub fn loss_curve(path: &Path, title: &str, train: &[(f64, f64)], eval: &[(f64, f64)]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| TrainError::file(path, e);
    let all = train.iter().chain(eval);
    let (mut x_max, mut y_min, mut y_max) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("loss (nats/token)")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
        .map_err(|e| err(&e))?
        .label("train loss")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    if !eval.is_empty() {
        chart
            .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("eval loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
