//! Error measures for parity checks and tests.

use candle_core::{DType, Result, Tensor};

/// Largest `|x|` over all elements, in f32.
pub fn max_abs(a: &Tensor) -> Result<f32> {
    a.to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

/// Largest `|a - b|` over all elements, compared in f32; the shapes must match.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        candle_core::bail!("cannot compare shapes {:?} and {:?}", a.dims(), b.dims());
    }
    max_abs(&(a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn measures_the_largest_difference_and_refuses_mismatched_shapes() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[1f32, -2., 3.], &dev).unwrap();
        let b = Tensor::new(&[1f32, 2., 2.5], &dev).unwrap();
        assert_eq!(max_abs_diff(&a, &b).unwrap(), 4.0);
        assert_eq!(max_abs(&a).unwrap(), 3.0);
        let c = Tensor::new(&[1f32, 2.], &dev).unwrap();
        assert!(max_abs_diff(&a, &c).is_err());
    }
}
