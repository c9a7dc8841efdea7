//! Reverse-mode automatic differentiation on a dynamic graph.
//!
//! An op records a [`Node`] only when gradients are enabled and one of its inputs requires
//! grad. The node holds edges to its inputs' nodes (or to leaf tensors) and a one-shot
//! backward closure that owns exactly the tensors it saved. `backward()` sorts the nodes
//! topologically, walks them in reverse, and *drops each closure right after it runs*, so
//! every saved activation is freed as soon as the backward pass is done with it.
//! Calling `backward()` a second time through the same graph is therefore an error, as in
//! PyTorch without `retain_graph`.

pub mod gradcheck;

use crate::tensor::{Shape, Tensor, TensorId};
use crate::{Error, Result};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops record a graph on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Restores the previous grad mode when dropped.
pub struct GradModeGuard(bool);
impl Drop for GradModeGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.0));
    }
}

/// Disables graph recording until the guard is dropped.
pub fn no_grad_guard() -> GradModeGuard {
    grad_mode_guard(false)
}

/// Sets this thread's grad mode to `enabled` until the guard is dropped (PyTorch's
/// `torch.set_grad_enabled`). Code that runs a closure on a pool thread and needs the
/// caller's mode there uses it: the mode is per thread, and a pool worker may take the
/// closure while one of its earlier jobs waits, inside that job's `no_grad`.
pub fn grad_mode_guard(enabled: bool) -> GradModeGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(enabled));
    GradModeGuard(prev)
}

/// Runs `f` without recording a graph (inference, optimizer updates, metrics).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = no_grad_guard();
    f()
}

/// The gradient of the node's output in, one optional gradient per input out.
pub type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// Where an input's gradient goes.
enum Edge {
    /// The input was computed by another recorded op.
    Node(Arc<Node>),
    /// The input is a leaf that requires grad (a parameter).
    Leaf(Tensor),
}

/// One recorded op in the graph.
pub struct Node {
    id: u64,
    op: &'static str,
    /// One entry per input; `None` for inputs that need no gradient.
    edges: Vec<Option<Edge>>,
    input_shapes: Vec<Shape>,
    /// Taken (and dropped, freeing saved tensors) when the backward pass runs it.
    /// `None` from the start for an op that has no backward rule.
    backward: Mutex<Option<BackwardFn>>,
    has_backward: bool,
}

impl Node {
    pub fn op(&self) -> &'static str {
        self.op
    }
}

/// Whether an op over these inputs must record a node.
pub fn is_recording(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())
}

fn make_node(op: &'static str, inputs: &[&Tensor], backward: Option<BackwardFn>) -> Arc<Node> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let edges = inputs
        .iter()
        .map(|t| {
            if !t.requires_grad() {
                None
            } else if let Some(n) = t.grad_fn() {
                Some(Edge::Node(n.clone()))
            } else {
                Some(Edge::Leaf((*t).clone()))
            }
        })
        .collect();
    Arc::new(Node {
        id: NEXT.fetch_add(1, Ordering::Relaxed),
        op,
        edges,
        input_shapes: inputs.iter().map(|t| t.shape().clone()).collect(),
        has_backward: backward.is_some(),
        backward: Mutex::new(backward),
    })
}

impl Tensor {
    /// Records `out = op(inputs)` with its backward rule, when recording. Backward closures must
    /// capture only detached tensors (`t.detach()`), never the graph itself.
    pub(crate) fn record(
        out: Tensor,
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Tensor {
        if !is_recording(inputs) {
            return out;
        }
        out.with_grad_fn(make_node(op, inputs, Some(Box::new(backward))))
    }

    /// Records an op that has no backward rule yet: the forward works, and `backward()` through
    /// it fails with [`Error::NoBackward`] instead of silently leaving its inputs without gradient.
    #[allow(dead_code)] // the safety net for ops whose backward is not written yet; exercised in tests
    pub(crate) fn record_without_backward(
        out: Tensor,
        op: &'static str,
        inputs: &[&Tensor],
    ) -> Tensor {
        if !is_recording(inputs) {
            return out;
        }
        out.with_grad_fn(make_node(op, inputs, None))
    }

    /// Back-propagates from this scalar (gradient 1). See [`backward_with`](Self::backward_with).
    pub fn backward(&self) -> Result<Gradients> {
        if self.elem_count() != 1 {
            return Err(Error::Autograd(format!(
                "backward() needs a one-element output, got shape {}; use backward_with(grad) for others",
                self.shape()
            )));
        }
        let one = Tensor::ones(self.shape().clone(), self.dtype(), self.device())?;
        self.backward_with(&one)
    }

    /// Back-propagates `grad` (the gradient of some scalar with respect to this tensor).
    /// Every leaf reached that requires grad has the result added to its `.grad()`, and the
    /// gradients of this call are also returned, keyed by leaf.
    pub fn backward_with(&self, grad: &Tensor) -> Result<Gradients> {
        self.backprop(grad, true)
    }

    /// The gradients of this scalar with respect to every leaf that requires grad, returned
    /// and *not* added to the leaves' `.grad()` (PyTorch's `torch.autograd.grad`). Threads
    /// back-propagating separate graphs over the same parameters (see
    /// [`crate::train::data_parallel`]) use this, then add the results in a fixed order.
    pub fn gradients(&self) -> Result<Gradients> {
        if self.elem_count() != 1 {
            return Err(Error::Autograd(format!(
                "gradients() needs a one-element output, got shape {}",
                self.shape()
            )));
        }
        let one = Tensor::ones(self.shape().clone(), self.dtype(), self.device())?;
        self.backprop(&one, false)
    }

    /// The backward pass; `accumulate` adds each leaf's gradient to its `.grad()`.
    fn backprop(&self, grad: &Tensor, accumulate: bool) -> Result<Gradients> {
        if !self.requires_grad() {
            return Err(Error::Autograd("this tensor does not require grad (no input of its graph requires grad, or it was computed under no_grad)".into()));
        }
        if grad.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "backward_with",
                lhs: self.shape().clone(),
                rhs: grad.shape().clone(),
            });
        }
        let _guard = no_grad_guard();
        let mut leaf_grads: HashMap<TensorId, (Tensor, Tensor)> = HashMap::new();
        let root = match self.grad_fn() {
            None => {
                // Backward from a leaf: its gradient is the seed itself.
                accumulate_leaf(&mut leaf_grads, self, grad.clone())?;
                return finish(leaf_grads, accumulate);
            }
            Some(n) => n.clone(),
        };

        // Topological order: post-order DFS (inputs before outputs), iterative to avoid deep recursion.
        let mut order: Vec<Arc<Node>> = Vec::new();
        let mut visited: std::collections::HashSet<u64> = std::collections::HashSet::new();
        let mut stack: Vec<(Arc<Node>, bool)> = vec![(root.clone(), false)];
        while let Some((node, expanded)) = stack.pop() {
            if expanded {
                order.push(node);
                continue;
            }
            if !visited.insert(node.id) {
                continue;
            }
            stack.push((node.clone(), true));
            for e in node.edges.iter().flatten() {
                if let Edge::Node(n) = e {
                    if !visited.contains(&n.id) {
                        stack.push((n.clone(), false));
                    }
                }
            }
        }

        let mut node_grads: HashMap<u64, Tensor> = HashMap::new();
        node_grads.insert(root.id, grad.detach());
        for node in order.iter().rev() {
            // The output gradient is removed (and freed after use) as soon as the node runs.
            let Some(g) = node_grads.remove(&node.id) else {
                continue;
            };
            if !node.has_backward {
                return Err(Error::NoBackward { op: node.op });
            }
            let f = node.backward.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| {
                Error::Autograd(format!(
                    "the graph through `{}` was already back-propagated and its saved tensors freed; run the forward pass again",
                    node.op
                ))
            })?;
            let input_grads = f(&g)?;
            drop(g);
            if input_grads.len() != node.edges.len() {
                return Err(Error::Autograd(format!(
                    "op `{}` returned {} gradients for {} inputs",
                    node.op,
                    input_grads.len(),
                    node.edges.len()
                )));
            }
            for ((edge, ig), shape) in node.edges.iter().zip(input_grads).zip(&node.input_shapes) {
                let (Some(edge), Some(ig)) = (edge, ig) else {
                    continue;
                };
                if ig.shape() != shape {
                    return Err(Error::Autograd(format!(
                        "op `{}` produced a gradient of shape {} for an input of shape {}",
                        node.op,
                        ig.shape(),
                        shape
                    )));
                }
                match edge {
                    Edge::Node(n) => {
                        let acc = match node_grads.remove(&n.id) {
                            Some(prev) => prev.add(&ig)?,
                            None => ig,
                        };
                        node_grads.insert(n.id, acc);
                    }
                    Edge::Leaf(t) => accumulate_leaf(&mut leaf_grads, t, ig)?,
                }
            }
        }
        finish(leaf_grads, accumulate)
    }
}

fn accumulate_leaf(
    map: &mut HashMap<TensorId, (Tensor, Tensor)>,
    leaf: &Tensor,
    g: Tensor,
) -> Result<()> {
    let g = match map.remove(&leaf.id()) {
        Some((_, prev)) => prev.add(&g)?,
        None => g,
    };
    map.insert(leaf.id(), (leaf.clone(), g));
    Ok(())
}

fn finish(leaf_grads: HashMap<TensorId, (Tensor, Tensor)>, accumulate: bool) -> Result<Gradients> {
    let mut out = HashMap::new();
    for (id, (leaf, g)) in leaf_grads {
        let g = g.contiguous()?;
        if accumulate {
            let acc = match leaf.grad() {
                Some(prev) => prev.add(&g)?,
                None => g.clone(),
            };
            leaf.set_grad(Some(acc));
        }
        out.insert(id, g);
    }
    Ok(Gradients(out))
}

/// The gradients one `backward()` call produced, keyed by leaf tensor.
#[derive(Default, Debug)]
pub struct Gradients(HashMap<TensorId, Tensor>);

impl Gradients {
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.0.get(&t.id())
    }
    pub fn get_id(&self, id: TensorId) -> Option<&Tensor> {
        self.0.get(&id)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Error, Tensor};

    #[test]
    fn op_without_backward_rule_fails_loudly() {
        let w = Tensor::ones(3, DType::F32, Device::Cpu)
            .unwrap()
            .requires_grad_()
            .unwrap();
        let y = Tensor::record_without_backward(w.detach(), "mystery_op", &[&w]);
        let err = y.sum_all().unwrap().backward().unwrap_err();
        assert!(
            matches!(err, Error::NoBackward { op: "mystery_op" }),
            "{err}"
        );
    }
}
