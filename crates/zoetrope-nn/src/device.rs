//! Where a model runs: `cpu`, `cuda` or `cuda:N`, as the command line and the server name it.
//!
//! The models and pipelines take a [`candle_core::Device`] and never assume the CPU: zoetrope's
//! own kernels (`zoetrope-kernels`, through [`crate::fast`] and [`crate::fused`]) are used only
//! for tensors on the CPU, and every other tensor goes through candle's own ops, which candle
//! implements for CUDA too. CUDA is a cargo feature (`cuda`), off by default; without it, asking
//! for a CUDA device is an error that says how to build with it.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// A device as the user names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU (zoetrope's AVX-512 / AMX kernels where the CPU has them).
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

/// Why a device could not be chosen or opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("'{0}' is not a device: use cpu, cuda or cuda:N (N the GPU's number, from 0)")]
    Unknown(String),
    #[error(
        "this zoetrope was built without CUDA: rebuild with `--features cuda` \
         (tools/cuda/build.sh sets up nvcc from PyPI and builds it), or use --device cpu"
    )]
    NotCompiled,
    #[error(
        "cannot open CUDA device {ordinal}: {reason} (does `nvidia-smi` list the GPU? the \
         NVIDIA driver and the CUDA runtime libraries must be installed)"
    )]
    Open { ordinal: usize, reason: String },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => return Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => return Ok(DeviceSpec::Cuda(0)),
            _ => {}
        }
        t.strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| DeviceError::Unknown(s.to_string()))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this build has the `cuda` feature.
pub const fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

impl DeviceSpec {
    /// Opens the device. A CUDA device in a build without the `cuda` feature is
    /// [`DeviceError::NotCompiled`]; one that cannot be opened (no driver, no such GPU) is
    /// [`DeviceError::Open`].
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => {
                if !cuda_compiled() {
                    return Err(DeviceError::NotCompiled);
                }
                Device::new_cuda(ordinal).map_err(|e| DeviceError::Open {
                    ordinal,
                    // candle's error carries a backtrace after its first line: one line here.
                    reason: e.to_string().lines().next().unwrap_or_default().to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (name, spec) in [
            ("cpu", DeviceSpec::Cpu),
            ("CPU", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(name.parse::<DeviceSpec>().unwrap(), spec, "{name}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        assert_eq!(DeviceSpec::Cpu.to_string(), "cpu");
        for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1", "metal"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.contains("cpu, cuda or cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn cpu_opens_and_cuda_says_how_to_get_it() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        if !cuda_compiled() {
            let err = DeviceSpec::Cuda(0).open().unwrap_err();
            assert!(matches!(err, DeviceError::NotCompiled), "{err}");
            assert!(err.to_string().contains("--features cuda"), "{err}");
        }
    }
}
