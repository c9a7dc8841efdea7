//! Where a tensor's storage lives: host memory, or the memory of one CUDA GPU (by ordinal).
//! Moving data between devices is explicit (`Tensor::to_device`); ops never mix devices.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal (as `nvidia-smi` numbers them).
    Cuda(usize),
}

impl Device {
    pub fn is_cpu(self) -> bool {
        matches!(self, Device::Cpu)
    }
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
    /// CUDA device `ordinal`, checked: an error (not a panic) when no CUDA driver is installed,
    /// no GPU is present, or the ordinal does not exist. Creates the device's context lazily.
    pub fn cuda(ordinal: usize) -> crate::Result<Device> {
        crate::backend::cuda::device(ordinal)?;
        Ok(Device::Cuda(ordinal))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
