//! Batches of rendered examples and the loss over their target tokens: the model crate's
//! [`ferrotune_model::batch`], re-exported so training code keeps its `crate::batch` paths
//! (evaluation uses the same module without depending on this crate).

pub use ferrotune_model::batch::*;

#[cfg(test)]
mod tests {
    /// The model crate repeats the data crate's ignore label (it cannot depend on it): a
    /// rendered example's masked labels must be the ones the loss skips.
    #[test]
    fn the_loss_skips_the_label_the_renderer_masks_with() {
        assert_eq!(super::IGNORE_INDEX, ferrotune_data::IGNORE_INDEX);
    }
}
