//! The `Tensor` handle: a cheap-to-clone reference to storage, a layout (view) over it, and
//! the autograd bookkeeping (whether it requires grad, the node that produced it, the
//! accumulated gradient of a leaf).

mod create;
mod device;
mod dtype;
mod layout;
mod shape;
mod view;

pub use device::Device;
pub use dtype::{DType, WithDType};
pub use layout::Layout;
pub(crate) use layout::{merge_dims, Runs};
pub(crate) use shape::dim_for_insert;
pub use shape::{Dim, Shape};

use crate::autograd::Node;
use crate::backend::{CpuStorage, Storage};
use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A process-unique tensor identity (a view or a detached copy gets a new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub struct TensorInner {
    id: TensorId,
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
    /// The node that produced this tensor when it was recorded in a graph.
    grad_fn: Option<Arc<Node>>,
    /// For leaves: whether gradients flow to it (freeze / unfreeze). Non-leaves: `grad_fn.is_some()`.
    requires_grad: AtomicBool,
    /// Accumulated gradient of a leaf, summed over `backward()` calls until zeroed.
    grad: Mutex<Option<Tensor>>,
}

/// An n-dimensional array on a device. Cloning is cheap (a reference count).
#[derive(Clone)]
pub struct Tensor(Arc<TensorInner>);

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, shape: impl Into<Shape>) -> Tensor {
        let layout = Layout::contiguous(shape);
        Self::from_parts(Arc::new(RwLock::new(storage)), layout, None)
    }

    fn from_parts(
        storage: Arc<RwLock<Storage>>,
        layout: Layout,
        grad_fn: Option<Arc<Node>>,
    ) -> Tensor {
        let (dtype, device) = {
            let s = storage.read().unwrap_or_else(|e| e.into_inner());
            (s.dtype(), s.device())
        };
        let requires_grad = grad_fn.is_some();
        Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            storage,
            layout,
            dtype,
            device,
            grad_fn,
            requires_grad: AtomicBool::new(requires_grad),
            grad: Mutex::new(None),
        }))
    }

    /// A new view over the same storage (used by view ops; the caller records the graph).
    pub(crate) fn with_layout(&self, layout: Layout) -> Tensor {
        Self::from_parts(self.0.storage.clone(), layout, None)
    }

    /// The same data and view as a graph output produced by `node`.
    pub(crate) fn with_grad_fn(self, node: Arc<Node>) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), self.0.layout.clone(), Some(node))
    }

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &Shape {
        self.0.layout.shape()
    }
    pub fn dims(&self) -> &[usize] {
        self.0.layout.dims()
    }
    pub fn rank(&self) -> usize {
        self.dims().len()
    }
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }
    /// Size of dimension `d` (negative counts from the end).
    pub fn dim<D: Dim>(&self, d: D) -> Result<usize> {
        Ok(self.dims()[d.to_index(self.shape(), "dim")?])
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().unwrap_or_else(|e| e.into_inner())
    }
    /// Whether two tensors view the same buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    // ---- autograd bookkeeping -------------------------------------------------------

    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }
    pub fn is_leaf(&self) -> bool {
        self.0.grad_fn.is_none()
    }
    pub(crate) fn grad_fn(&self) -> Option<&Arc<Node>> {
        self.0.grad_fn.as_ref()
    }
    /// Marks a leaf as a parameter that receives gradients (or freezes it with `false`).
    /// Only leaves can change this; a computed tensor's flag follows its inputs.
    pub fn set_requires_grad(&self, on: bool) -> Result<()> {
        if !self.is_leaf() {
            return Err(Error::Autograd(
                "requires_grad can only be changed on leaf tensors; use detach() first".into(),
            ));
        }
        if on && !self.dtype().is_compute_float() {
            return Err(Error::UnsupportedDType {
                op: "set_requires_grad",
                dtype: self.dtype(),
                expected: "f32 or f64",
            });
        }
        self.0.requires_grad.store(on, Ordering::Relaxed);
        Ok(())
    }
    /// Builder form of [`set_requires_grad(true)`](Self::set_requires_grad).
    pub fn requires_grad_(self) -> Result<Tensor> {
        self.set_requires_grad(true)?;
        Ok(self)
    }
    /// The same data, cut out of the graph: a leaf that does not require grad.
    pub fn detach(&self) -> Tensor {
        Self::from_parts(self.0.storage.clone(), self.0.layout.clone(), None)
    }
    /// The gradient accumulated on this leaf by `backward()` calls since the last `zero_grad`.
    pub fn grad(&self) -> Option<Tensor> {
        self.0
            .grad
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    pub(crate) fn set_grad(&self, g: Option<Tensor>) {
        *self.0.grad.lock().unwrap_or_else(|e| e.into_inner()) = g;
    }

    /// Overwrites this tensor's elements with `src` (same shape; cast when the dtypes differ).
    /// Not recorded in the graph: for buffers, loading weights and optimizer updates.
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "copy_from",
                lhs: self.shape().clone(),
                rhs: src.shape().clone(),
            });
        }
        let src = if src.dtype() != self.dtype() || self.same_storage(src) {
            src.detach().to_dtype(self.dtype())?.contiguous_copy()?
        } else {
            src.clone()
        };
        let src_storage = src.storage();
        self.storage_mut()
            .copy_into(self.layout(), &src_storage, src.layout())
    }

    // ---- devices ----------------------------------------------------------------------

    /// This tensor on `device`: the same tensor when it is already there, else a contiguous
    /// copy that goes through host memory exactly once (device to host, host to device).
    /// Recorded in the graph: the gradient travels back to this tensor's device.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        let device = *device;
        if device == self.device() {
            return Ok(self.clone());
        }
        let host = self.to_cpu_storage()?;
        let out = Tensor::from_storage(Storage::from_cpu(host, device)?, self.shape().clone());
        let from = self.device();
        Ok(Tensor::record(out, "to_device", &[self], move |g| {
            Ok(vec![Some(g.to_device(&from)?)])
        }))
    }
    /// Short form of [`to_device`](Self::to_device).
    pub fn to(&self, device: Device) -> Result<Tensor> {
        self.to_device(&device)
    }

    // ---- data out ---------------------------------------------------------------------

    /// A contiguous host copy of the data.
    pub fn to_cpu_storage(&self) -> Result<CpuStorage> {
        self.storage().to_cpu(self.layout())
    }
    /// All elements in row-major order; `T` must match the dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        let cpu = self.to_cpu_storage()?;
        Ok(cpu.as_slice::<T>("to_vec")?.to_vec())
    }
    /// All elements converted to f64 (any dtype).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        let cpu = self
            .storage()
            .to_dtype(self.layout(), DType::F64)?
            .to_cpu(&Layout::contiguous(self.shape().clone()))?;
        Ok(cpu.as_slice::<f64>("to_vec_f64")?.to_vec())
    }
    pub fn to_vec1<T: WithDType>(&self) -> Result<Vec<T>> {
        if self.rank() != 1 {
            return Err(Error::shape(
                "to_vec1",
                "expected a rank-1 tensor",
                &[self.shape()],
            ));
        }
        self.to_vec()
    }
    pub fn to_vec2<T: WithDType>(&self) -> Result<Vec<Vec<T>>> {
        if self.rank() != 2 {
            return Err(Error::shape(
                "to_vec2",
                "expected a rank-2 tensor",
                &[self.shape()],
            ));
        }
        let cols = self.dims()[1];
        Ok(self
            .to_vec::<T>()?
            .chunks(cols.max(1))
            .map(|c| c.to_vec())
            .collect())
    }
    /// The single value of a one-element tensor.
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::shape(
                "to_scalar",
                "expected exactly one element",
                &[self.shape()],
            ));
        }
        Ok(self.to_vec::<T>()?[0])
    }
    /// The single value of a one-element tensor of any dtype, as f64.
    pub fn item(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            return Err(Error::shape(
                "item",
                "expected exactly one element",
                &[self.shape()],
            ));
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// Checks this tensor's dtype is one the compute kernels take.
    pub(crate) fn check_float(&self, op: &'static str) -> Result<()> {
        if self.dtype().is_compute_float() {
            Ok(())
        } else {
            Err(Error::UnsupportedDType {
                op,
                dtype: self.dtype(),
                expected: "f32 or f64",
            })
        }
    }
    /// Checks two tensors share dtype and device.
    pub(crate) fn check_same(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.device() != other.device() {
            return Err(Error::DeviceMismatch {
                op,
                lhs: self.device(),
                rhs: other.device(),
            });
        }
        if self.dtype() != other.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: self.dtype(),
                rhs: other.dtype(),
            });
        }
        Ok(())
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor[{}; {:?}; {}",
            self.shape(),
            self.dtype(),
            self.device()
        )?;
        if self.requires_grad() {
            write!(f, "; requires_grad")?;
        }
        if self.elem_count() <= 16 {
            if let Ok(v) = self.to_vec_f64() {
                write!(f, "; {v:?}")?;
            }
        }
        write!(f, "]")
    }
}
