"""PyTorch CPU reference for `cargo bench --bench ops`: the same shapes, same thread count.

Usage: python3 benches/reference/cpu_ops.py [--threads 2]
Prints one line per case: name, median ms, and GFLOP/s or GB/s as criterion reports them.
"""
import argparse, time
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)


def bench(name, fn, flops=None, nbytes=None, reps=20):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ms = sorted(ts)[len(ts) // 2] * 1e3
    rate = f"{flops / ms / 1e6:8.1f} GFLOP/s" if flops else f"{nbytes / ms / 1e6:8.1f} GB/s"
    print(f"torch {name:38s} {ms:9.3f} ms  {rate}")


for n in (128, 256, 512):
    x, y = torch.randn(n, n), torch.randn(n, n)
    bench(f"gemm/{n}", lambda: x @ y, flops=2 * n**3)
x, w = torch.randn(2048, 256), torch.randn(256, 1024)
bench("gemm/mlp_2048x256x1024", lambda: x @ w, flops=2 * 2048 * 256 * 1024)

x = torch.randn(4096, 512)
g, b = torch.randn(512), torch.randn(512)
nb = 2 * 4096 * 512 * 4
bench("rowwise/softmax_4096x512", lambda: torch.softmax(x, -1), nbytes=nb)
bench("rowwise/layer_norm_4096x512", lambda: F.layer_norm(x, (512,), g, b, 1e-5), nbytes=nb)
bench("rowwise/gelu_4096x512", lambda: F.gelu(x), nbytes=nb)

q, k, v = (torch.randn(4, 4, 256, 64) for _ in range(3))
bench("attention/sdpa_causal_b4h4t256d64", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), flops=4 * 4 * 256 * 256 * 64 * 2)

for (n, ci, co, hw) in ((8, 64, 64, 56), (8, 128, 128, 32)):
    x = torch.randn(n, ci, hw, hw)
    wt = torch.randn(co, ci, 3, 3)
    fl = 2 * n * co * hw * hw * ci * 9
    bench(f"conv2d/forward_n{n}_c{ci}_{hw}x{hw}", lambda: F.conv2d(x, wt, padding=1), flops=fl, reps=10)
    xg, wg = x.clone().requires_grad_(), wt.clone().requires_grad_()

    def fb():
        F.conv2d(xg, wg, padding=1).sum().backward()
        xg.grad = None
        wg.grad = None

    bench(f"conv2d/forward_backward_n{n}_c{ci}_{hw}x{hw}", fb, flops=3 * fl, reps=5)
