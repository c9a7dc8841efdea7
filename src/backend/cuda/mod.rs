//! The CUDA backend: [`CudaStorage`] implements the same family traits as the CPU backend
//! with kernels from `kernels/*.cu`, compiled at run time by NVRTC (`compile.rs`) and cached
//! on disk; device memory comes from a caching allocator (`alloc.rs`).
//!
//! Each GPU in use has one [`CudaDevice`], created on first use and kept in a global for the
//! life of the process: its context, **one stream** every kernel and copy of that device runs
//! on (so work is ordered without events), its allocator and its loaded modules. Nothing here
//! panics without a driver: [`cuda_available`] checks for `libcuda` before touching it (cudarc
//! panics when the library is absent), and every failure is an [`Error::Cuda`].
//!
//! # Launching a kernel from a family file
//!
//! A family file (`cuda/<family>.rs`) implements its trait for [`CudaStorage`]. To run
//! `extern "C" __global__ void scale_f32(float* out, const float* x, float a, unsigned long long n)`
//! from `kernels/example.cu`:
//!
//! ```ignore
//! use crate::backend::cuda::{kernel_args, launch_1d, CudaStorage};
//!
//! fn scale(x: &CudaStorage, a: f32) -> Result<CudaStorage> {
//!     let dev = x.dev();                                  // the x's CudaDevice
//!     let n = x.len();
//!     let out = CudaStorage::alloc(dev, n, DType::F32)?;  // uninitialized, contiguous
//!     // Arguments in the kernel's order, each with the kernel's exact C type:
//!     // pointers are `u64` device addresses (`.ptr()`, or `.ptr_at(elem_offset)`),
//!     // `float` is f32, `unsigned long long` is u64, `int` is i32, a layout struct is a
//!     // `StridedArg` (the `Strided` struct of common.cuh, passed by value).
//!     let args = kernel_args![out.ptr(), x.ptr(), a, n as u64];
//!     // One thread per element, 256 per block; kernels loop grid-stride, so any grid works.
//!     dev.launch("example.cu", "scale_f32", launch_1d(n, 256), args)?;
//!     Ok(out)
//! }
//! ```
//!
//! [`CudaDevice::launch`] loads the module on first use (compiling or reading the cache),
//! looks the function up by name, and enqueues it on the device's stream; a launch with an
//! empty grid is skipped, and block/grid limits are checked before the driver sees them.
//! Errors inside a kernel surface at the next synchronizing call (a copy to the host,
//! [`CudaDevice::synchronize`]). There is no implicit copy to the host anywhere: an op a
//! family does not implement on the GPU returns [`Error::UnsupportedDevice`].

pub mod alloc;
pub mod attention;
pub mod compile;
pub mod conv;
pub mod elementwise;
pub mod index;
pub mod kernel_io;
pub mod launch;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod random;
pub mod reduce;
pub mod softmax;
pub mod storage;

pub use alloc::AllocStats;
pub use launch::{kernel_args, launch_1d, KernelArgs, LaunchConfig, StridedArg, MAX_RANK};
pub use storage::CudaStorage;

use crate::tensor::Device;
use crate::{Error, Result};
use alloc::{CachingAllocator, RawError, RawMemory};
use cudarc::driver::{
    result as drv, sys as drv_sys, CudaContext, CudaFunction, CudaModule, CudaStream,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What the driver reported at start-up.
#[derive(Clone, Debug)]
pub struct DriverInfo {
    /// As `cuDriverGetVersion` returns it: 13000 for CUDA 13.0.
    pub version: i32,
    pub device_count: usize,
    /// The path of the `libcuda` that was loaded.
    pub library: String,
}

/// Whether a CUDA driver and at least one GPU are usable, and if not, why (one line).
pub fn cuda_available() -> std::result::Result<(), String> {
    driver_info().map(|_| ())
}

/// The driver's version and device count, or why there is no usable driver. Checked once.
pub fn driver_info() -> std::result::Result<DriverInfo, String> {
    static INFO: OnceLock<std::result::Result<DriverInfo, String>> = OnceLock::new();
    INFO.get_or_init(probe_driver).clone()
}

fn probe_driver() -> std::result::Result<DriverInfo, String> {
    // cudarc panics (it does not return an error) on the first driver call when libcuda is
    // absent, so this check must come before anything else.
    if !unsafe { drv_sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda.so not found)".into());
    }
    drv::init().map_err(|e| format!("the CUDA driver did not initialize: {e:?}"))?;
    let mut version = 0;
    unsafe { drv_sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| format!("cuDriverGetVersion failed: {e:?}"))?;
    let count =
        drv::device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {e:?}"))? as usize;
    if count == 0 {
        return Err(format!(
            "the CUDA driver ({}) reports no GPU",
            version_string(version)
        ));
    }
    Ok(DriverInfo {
        version,
        device_count: count,
        library: compile::loaded_library_path("libcuda.so").unwrap_or_else(|| "libcuda".into()),
    })
}

/// 13000 -> "13.0".
pub fn version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// One GPU in use: context, stream, allocator, loaded modules.
pub struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    capability: (i32, i32),
    allocator: Mutex<CachingAllocator>,
    /// Loaded modules by file name, with their functions looked up so far.
    modules: Mutex<HashMap<&'static str, LoadedModule>>,
}

struct LoadedModule {
    module: Arc<CudaModule>,
    functions: HashMap<String, CudaFunction>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaDevice(cuda:{}, sm_{}{})",
            self.ordinal, self.capability.0, self.capability.1
        )
    }
}

/// The device for `ordinal`, created on first use (context, stream, NVRTC check).
pub fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let info = driver_info().map_err(Error::Cuda)?;
    if ordinal >= info.device_count {
        return Err(Error::Cuda(format!(
            "cuda:{ordinal} does not exist ({} GPU(s) found)",
            info.device_count
        )));
    }
    let mut devices = DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(d) = devices.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Arc::new(CudaDevice::new(ordinal, &info)?);
    devices.insert(ordinal, d.clone());
    Ok(d)
}

fn driver_err(what: &str) -> impl FnOnce(drv::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{what}: {e:?}"))
}

impl CudaDevice {
    fn new(ordinal: usize, info: &DriverInfo) -> Result<CudaDevice> {
        // Kernels are compiled at run time: find out now, not at the first op, whether NVRTC
        // is there and whether the driver can load what it produces.
        let nvrtc = compile::nvrtc_info()?;
        let nvrtc_version = nvrtc.major * 1000 + nvrtc.minor * 10;
        if nvrtc_version > info.version {
            return Err(Error::Cuda(format!(
                "NVRTC {}.{} ({}) is newer than the CUDA driver ({}), which cannot load its \
                 output; install NVRTC {} (e.g. nvidia-cuda-nvrtc=={}.0.*)",
                nvrtc.major,
                nvrtc.minor,
                nvrtc.library,
                version_string(info.version),
                version_string(info.version),
                info.version / 1000
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err("creating the CUDA context"))?;
        let stream = ctx
            .new_stream()
            .map_err(driver_err("creating a CUDA stream"))?;
        let capability = ctx
            .compute_capability()
            .map_err(driver_err("reading the compute capability"))?;
        Ok(CudaDevice {
            ordinal,
            ctx,
            stream,
            capability,
            allocator: Mutex::new(CachingAllocator::default()),
            modules: Mutex::new(HashMap::new()),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
    /// `(major, minor)`, e.g. `(9, 0)` for an H100.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.capability
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream all of this device's work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub fn name(&self) -> Result<String> {
        self.ctx
            .name()
            .map_err(driver_err("reading the device name"))
    }
    pub fn total_memory(&self) -> Result<usize> {
        self.ctx
            .total_mem()
            .map_err(driver_err("reading the memory size"))
    }
    pub fn sm_count(&self) -> Result<usize> {
        self.ctx
            .attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map(|n| n as usize)
            .map_err(driver_err("reading the SM count"))
    }

    /// Makes this device's context current on the calling thread (driver calls need it).
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(driver_err("binding the CUDA context"))
    }

    /// Waits for all queued work; a kernel fault shows up here.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err(
            "synchronizing the stream (an earlier kernel failed)",
        ))
    }

    // ---- memory -------------------------------------------------------------------------

    /// `bytes` of uninitialized device memory from the caching allocator.
    pub(crate) fn alloc_raw(&self, bytes: usize) -> Result<(u64, usize)> {
        self.bind()?;
        let mut a = self.allocator.lock().unwrap_or_else(|e| e.into_inner());
        let what = format!("cuda:{}", self.ordinal);
        a.alloc(bytes, &mut DriverMemory { dev: self }, &what)
    }
    /// Gives a block back to the allocator (see alloc.rs on why no sync is needed).
    pub(crate) fn free_raw(&self, ptr: u64, class: usize) {
        self.allocator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free(ptr, class);
    }
    pub fn memory_stats(&self) -> AllocStats {
        self.allocator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats()
    }
    pub fn reset_peak_memory(&self) {
        self.allocator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset_peak();
    }
    /// Returns every cached block to the driver.
    pub fn empty_cache(&self) -> Result<()> {
        self.bind()?;
        self.allocator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .empty_cache(&mut DriverMemory { dev: self })
    }

    /// Copies host bytes to device address `dst` (queued on the stream).
    pub(crate) fn copy_to_device(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // Pageable host memory: the call returns once the source has been consumed.
        unsafe { drv::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(driver_err("copying to the device"))
    }
    /// Copies device bytes at `src` into `dst`, waiting for them (and all queued work).
    pub(crate) fn copy_to_host(&self, dst: &mut [u8], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        unsafe { drv::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(driver_err("copying to the host"))?;
        self.synchronize()
    }
    /// Sets `bytes` bytes at `dst` to zero (queued).
    pub(crate) fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        unsafe { drv::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }
            .map_err(driver_err("zeroing device memory"))
    }
    /// Copies `bytes` bytes between two device addresses (queued).
    pub(crate) fn copy_device_to_device(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        unsafe { drv::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(driver_err("copying on the device"))
    }

    // ---- kernels ------------------------------------------------------------------------

    /// The function `name` of kernel file `file`, loading (compiling) the module on first use.
    pub fn function(&self, file: &'static str, name: &str) -> Result<CudaFunction> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if !modules.contains_key(file) {
            let image = compile::module_image(file, self.capability)?;
            self.bind()?;
            let module = self
                .ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(image))
                .map_err(|e| Error::Cuda(format!("loading module {file}: {e:?}")))?;
            modules.insert(
                file,
                LoadedModule {
                    module,
                    functions: HashMap::new(),
                },
            );
        }
        let m = modules.get_mut(file).expect("inserted above");
        if let Some(f) = m.functions.get(name) {
            return Ok(f.clone());
        }
        let f = m
            .module
            .load_function(name)
            .map_err(|e| Error::Cuda(format!("{file} has no kernel named {name}: {e:?}")))?;
        m.functions.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Queues kernel `name` of `file` on this device's stream with `args` (see the module doc).
    pub fn launch(
        &self,
        file: &'static str,
        name: &str,
        cfg: LaunchConfig,
        mut args: KernelArgs,
    ) -> Result<()> {
        if cfg.is_empty() {
            return Ok(());
        }
        cfg.validate(file, name)?;
        let f = self.function(file, name)?;
        self.bind()?;
        unsafe {
            drv::launch_kernel(
                f.cu_function(),
                cfg.grid,
                cfg.block,
                cfg.shared_mem_bytes,
                self.stream.cu_stream(),
                args.pointers(),
            )
        }
        .map_err(|e| Error::Cuda(format!("launching {file}:{name} with {cfg:?}: {e:?}")))
    }
}

/// The allocator's view of the driver for one device.
struct DriverMemory<'a> {
    dev: &'a CudaDevice,
}

impl RawMemory for DriverMemory<'_> {
    fn malloc(&mut self, bytes: usize) -> std::result::Result<u64, RawError> {
        match unsafe { drv::malloc_sync(bytes) } {
            Ok(p) => Ok(p),
            Err(e) if e.0 == drv_sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                Err(RawError::OutOfMemory)
            }
            Err(e) => Err(RawError::Other(format!("{e:?}"))),
        }
    }
    fn free(&mut self, ptr: u64) {
        // Nothing uses the block any more (the allocator synchronized); a failure here would
        // only leak it.
        unsafe { drv::free_sync(ptr) }.ok();
    }
    fn synchronize(&mut self) -> Result<()> {
        self.dev.synchronize()
    }
}

/// For tests of both CUDA helpers: the first GPU, or `None` after printing
/// `skipped: no CUDA device` (once per process). With `TESSERA_REQUIRE_GPU=1` a missing GPU
/// panics instead, so a GPU run cannot pass by skipping.
pub fn test_device() -> Option<Device> {
    match device(0) {
        Ok(d) => Some(d.device()),
        Err(e) => {
            if std::env::var("TESSERA_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("TESSERA_REQUIRE_GPU=1 but no CUDA device is usable: {e}");
            }
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| println!("skipped: no CUDA device"));
            None
        }
    }
}
