#!/usr/bin/env python3
"""Side by side: `tessera bench` and the same cases in numpy (OpenBLAS) and PyTorch, in one run.

    python3 benches/reference/compare.py --suite gemm [--threads 2] [--seconds 1] [--rounds N]
                                         [--filter X] [--markdown]

Runs `target/release/tessera bench --suite S --json` (build it first with `cargo build --release`),
then times every case it printed with the reference library, the same way (one warm-up, then
repeated runs for the same time budget, median), on the same number of threads:

  gemm       numpy.matmul (OpenBLAS, numpy's wheel)           `pip install numpy`
  conv       torch.nn.functional.conv2d (+ backward)          `pip install torch`
  attention  torch.nn.functional.scaled_dot_product_attention (+ backward)
  norm       torch clone / add / softmax / gelu / tanh / layer_norm / AdamW
  train      the same model in PyTorch eager: the char transformer with AdamW; CLIP `seed` as the
             article's code (clip_seed.py) with Adam, which encodes every caption, so the
             `clip_seed_*_distinct_captions` row compares tessera's default with the article's way
             and `clip_seed_*_each_caption` is like for like

and prints one row per case: ours, theirs, and theirs/ours in time (> 1 means tessera is faster),
plus peak memory (ours: bytes held by tensors; PyTorch: growth of the process's peak RSS while the
case ran, measured in a fresh subprocess for train cases).

`--rounds N` runs both sides N times, alternating which goes first, and compares each side's best
round per case (the least disturbed one), printing every round's ratio beside it. On a shared
virtual machine whose speed drifts for seconds at a time (one side's run can land in a slow spell
and halve its speed), a single round's ratio is noise; the best of three is what the tables in
docs/PERF.md use from session 24 on.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def timed(fn, seconds, min_reps):
    fn()
    ts = []
    start = time.perf_counter()
    while len(ts) < min_reps or (time.perf_counter() - start < seconds and len(ts) < 1000):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def ref_gemm(c):
    import numpy as np
    rng = np.random.default_rng(0)
    b, m, n, k = c["batch"], c["m"], c["n"], c["k"]
    a = rng.standard_normal((b, m, k) if b > 1 else (m, k), dtype=np.float32)
    if c["b_transposed"]:
        w = rng.standard_normal((n, k), dtype=np.float32).T
    else:
        w = rng.standard_normal((b, k, n) if b > 1 else (k, n), dtype=np.float32)
    return lambda: np.matmul(a, w), "numpy " + np.__version__


def ref_conv(c):
    import torch
    import torch.nn.functional as F
    x = torch.randn(c["n"], c["ci"], c["h"], c["w"])
    w = torch.randn(c["co"], c["ci"], c["kernel"], c["kernel"]) * 0.05
    s, p = c["stride"], c["padding"]
    if c["pass"] == "forward":
        def fn():
            with torch.no_grad():
                F.conv2d(x, w, stride=s, padding=p)
        return fn, "torch " + torch.__version__
    x.requires_grad_()
    w.requires_grad_()
    y = F.conv2d(x, w, stride=s, padding=p)
    g = torch.randn_like(y)

    def fb():
        F.conv2d(x, w, stride=s, padding=p).backward(g)
        x.grad = None
        w.grad = None
    return fb, "torch " + torch.__version__


def ref_attention(c):
    import torch
    import torch.nn.functional as F
    shape = (c["batch"], c["heads"], c["t"], c["d"])
    q, k, v = (torch.randn(shape) for _ in range(3))
    causal = c["causal"]
    if c["pass"] == "forward":
        def fn():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return fn, "torch " + torch.__version__
    for t in (q, k, v):
        t.requires_grad_()
    g = torch.randn(shape)

    def fb():
        F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(g)
        for t in (q, k, v):
            t.grad = None
    return fb, "torch " + torch.__version__


def ref_norm(c):
    import torch
    import torch.nn.functional as F
    op = c["op"]
    ver = "torch " + torch.__version__
    if op == "adamw":
        p = torch.nn.Parameter(torch.randn(c["params"]))
        p.grad = torch.randn(c["params"])
        opt = torch.optim.AdamW([p])
        return opt.step, ver
    x, y = torch.randn(c["rows"], c["cols"]), torch.randn(c["rows"], c["cols"])
    g, b = torch.randn(c["cols"]), torch.randn(c["cols"])
    if op == "layer_norm_forward_backward":
        xg = x.clone().requires_grad_()

        def fb():
            F.layer_norm(xg, (c["cols"],), g, b, 1e-5).backward(y)
            xg.grad = None
        return fb, ver
    fns = {
        "copy": lambda: x.clone(),
        "add": lambda: x + y,
        "softmax": lambda: torch.softmax(x, -1),
        "gelu": lambda: F.gelu(x),
        "tanh": lambda: torch.tanh(x),
        "layer_norm_forward": lambda: F.layer_norm(x, (c["cols"],), g, b, 1e-5),
    }
    return fns[op], ver


TRAIN_CHILD = r'''
import json, resource, sys, time, torch, torch.nn as nn, torch.nn.functional as F
c = json.loads(sys.argv[1]); torch.set_num_threads(int(sys.argv[2])); torch.manual_seed(0)
seconds, min_reps = float(sys.argv[3]), int(sys.argv[4])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
class Block(nn.Module):
    def __init__(s, d, h):
        super().__init__(); s.h = h
        s.norm1, s.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        s.qkv, s.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        s.fc1, s.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
    def forward(s, x):
        B, T, C = x.shape
        q, k, v = s.qkv(s.norm1(x)).view(B, T, 3, s.h, C // s.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + s.proj(a.transpose(1, 2).reshape(B, T, C))
        return x + s.fc2(F.gelu(s.fc1(s.norm2(x))))
class CharTransformer(nn.Module):
    def __init__(s, c):
        super().__init__(); d = c["dim"]
        s.tok, s.pos = nn.Embedding(c["vocab"], d), nn.Embedding(c["t"], d)
        s.blocks = nn.ModuleList([Block(d, c["heads"]) for _ in range(c["layers"])])
        s.ln_f, s.head = nn.LayerNorm(d), nn.Linear(d, c["vocab"], bias=False)
    def forward(s, ids):
        x = s.tok(ids) + s.pos(torch.arange(ids.shape[1]))
        for b in s.blocks: x = b(x)
        return s.head(s.ln_f(x))
m = CharTransformer(c); opt = torch.optim.AdamW(m.parameters())
ids = torch.randint(1, c["vocab"], (c["batch"], c["t"] + 1))
x, y = ids[:, :-1], ids[:, 1:]
def step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(m(x).reshape(-1, c["vocab"]), y.reshape(-1)).backward(); opt.step()
step(); ts = []; t_start = time.perf_counter()
while len(ts) < min_reps or (time.perf_counter() - t_start < seconds and len(ts) < 1000):
    t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
ts.sort(); rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"ms": ts[len(ts) // 2] * 1e3, "rss_growth_bytes": (rss1 - rss0) * 1024,
                  "ref": "torch " + torch.__version__,
                  "params": sum(p.numel() for p in m.parameters())}))
'''


# CLIP `seed`: the article's model and training step from clip_seed.py (imported, not copied),
# Adam 1e-3, on random 28x28 images with random Fashion-MNIST labels. The article encodes every
# image's caption, so this is the reference of both tessera cases: like for like for
# `each_caption`, and the article's way against tessera's default for `distinct_captions`.
CLIP_CHILD = r'''
import json, resource, sys, time, torch
c = json.loads(sys.argv[1]); torch.set_num_threads(int(sys.argv[2])); torch.manual_seed(0)
seconds, min_reps = float(sys.argv[3]), int(sys.argv[4]); sys.path.insert(0, sys.argv[5])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from clip_seed import CLIP, class_tables, train_step
m = CLIP(); opt = torch.optim.Adam(m.parameters(), lr=c["lr"])
class_tokens, class_masks = class_tables()
images = torch.randint(0, 256, (c["batch"], 1, 28, 28)).float() / 255
labels = torch.randint(0, len(class_tokens), (c["batch"],))
step = lambda: train_step(m, opt, images, labels, class_tokens, class_masks)
step(); ts = []; t_start = time.perf_counter()
while len(ts) < min_reps or (time.perf_counter() - t_start < seconds and len(ts) < 1000):
    t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
ts.sort(); rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"ms": ts[len(ts) // 2] * 1e3, "rss_growth_bytes": (rss1 - rss0) * 1024,
                  "ref": "torch " + torch.__version__ + ", article's code (every caption encoded)",
                  "params": sum(p.numel() for p in m.parameters())}))
'''


def ref_train(c, threads, seconds, min_reps):
    """Runs the case's PyTorch model in a fresh process (so its peak RSS is the case's own)."""
    if c["model"] == "char_transformer":
        argv = [TRAIN_CHILD, json.dumps(c), str(threads), str(seconds), str(min_reps)]
    elif c["model"] == "clip" and c["config"] == "seed":
        argv = [CLIP_CHILD, json.dumps(c), str(threads), str(seconds), str(min_reps), HERE]
    else:
        raise SystemExit(f"no reference for model {c['model']}")
    out = subprocess.run([sys.executable, "-c", *argv], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if c["model"] == "clip" and r["params"] != c["params"]:
        raise SystemExit(f"{c['case']}: the reference has {r['params']} parameters, tessera {c['params']}")
    return r


def cpu_ticks():
    """(steal, total) jiffies of all CPUs from /proc/stat, or None off Linux. On a shared
    virtual machine the host takes cores away in bursts; the steal share of each side's run
    says whether its timings can be trusted (a run with one side stolen from is noise)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return v[7] if len(v) > 7 else 0, sum(v[:8])


def run_ours(a):
    """One `tessera bench` process over the suite's (filtered) cases: its JSON lines."""
    cmd = [a.bin, "--threads", str(a.threads), "bench", "--suite", a.suite, "--json",
           "--seconds", str(a.seconds), "--min-reps", str(a.min_reps)]
    if a.filter:
        cmd += ["--filter", a.filter]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def run_refs(a, cases):
    """The reference of every case: {case: (ms, reference name, peak bytes or None)}."""
    refs = {"gemm": ref_gemm, "conv": ref_conv, "attention": ref_attention, "norm": ref_norm}
    out = {}
    for c in cases:
        if a.suite == "train":
            r = ref_train(c, a.threads, a.seconds, a.min_reps)
            out[c["case"]] = (r["ms"], r["ref"], r["rss_growth_bytes"])
        else:
            fn, ref = refs[a.suite](c)
            out[c["case"]] = (timed(fn, a.seconds, a.min_reps), ref, None)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="gemm", choices=["gemm", "conv", "attention", "norm", "train"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run both sides this many times, alternating which goes first, and "
                         "compare each side's best round (for machines whose speed drifts)")
    ap.add_argument("--filter")
    ap.add_argument("--markdown", action="store_true", help="print a docs/PERF.md table")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "tessera"))
    a = ap.parse_args()
    if a.rounds < 1:
        raise SystemExit("--rounds must be at least 1")

    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(a.threads)
    os.environ["MKL_NUM_THREADS"] = str(a.threads)
    try:
        import torch
        torch.set_num_threads(a.threads)
        torch.manual_seed(0)
    except ImportError:
        if a.suite != "gemm":
            raise
    # Round r: tessera's whole suite, then every reference (odd rounds: the references
    # first), so that a slow spell of the machine lands on both sides across the rounds.
    ours_rounds, refs_rounds = [], []
    stolen = {"ours": [0, 0], "refs": [0, 0]}

    def timed_side(side, fn):
        t0 = cpu_ticks()
        out = fn()
        t1 = cpu_ticks()
        if t0 is not None and t1 is not None:
            stolen[side][0] += t1[0] - t0[0]
            stolen[side][1] += t1[1] - t0[1]
        return out

    cases = None
    for r in range(a.rounds):
        if r % 2 == 1:
            refs_rounds.append(timed_side("refs", lambda: run_refs(a, cases)))
        ours = timed_side("ours", lambda: run_ours(a))
        if cases is None:
            cases = ours
        ours_rounds.append({c["case"]: c for c in ours})
        if r % 2 == 0:
            refs_rounds.append(timed_side("refs", lambda: run_refs(a, cases)))

    # Each side's best round per case (the least disturbed), and the ratio of the two.
    rows = []
    for c0 in cases:
        name = c0["case"]
        mine = min((o[name] for o in ours_rounds), key=lambda c: c["ms"])
        theirs, ref, their_mem = min((rr[name] for rr in refs_rounds), key=lambda t: t[0])
        per_round = [rr[name][0] / o[name]["ms"] for o, rr in zip(ours_rounds, refs_rounds)]
        rows.append((mine, theirs, ref, their_mem, per_round))

    unit = next((u for u in ("gflops", "gbps", "steps_per_s") if cases and u in cases[0]), "gflops")
    label = {"gflops": "GFLOP/s", "gbps": "GB/s", "steps_per_s": "steps/s"}[unit]
    head = ["case", "tessera ms", f"tessera {label}", "of ceiling", "reference", "ref ms",
            f"ref {label}", "ref ms / tessera ms", "tessera peak MiB", "ref peak MiB"]
    if a.rounds > 1:
        head.append(f"ratio in each of {a.rounds} rounds")
    table = []
    for c, theirs, ref, their_mem, per_round in rows:
        rate = c[unit]
        their_rate = rate * c["ms"] / theirs
        frac = f"{100 * c['fraction']:.0f}%" if "fraction" in c else "-"
        mem = f"{their_mem / 2**20:.0f} (RSS)" if their_mem is not None else "-"
        row = [c["case"], f"{c['ms']:.3f}", f"{rate:.1f}", frac, ref, f"{theirs:.3f}",
               f"{their_rate:.1f}", f"{theirs / c['ms']:.2f}", f"{c['peak_bytes'] / 2**20:.1f}", mem]
        if a.rounds > 1:
            row.append(" ".join(f"{x:.2f}" for x in per_round))
        table.append(row)
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in table:
            print("| " + " | ".join(r) + " |")
    else:
        w = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)] if table else []
        print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
        for r in table:
            print("  ".join(x.ljust(w[i]) for i, x in enumerate(r)))
    if table:
        ratios = [theirs / c["ms"] for c, theirs, _, _, _ in rows]
        best = f", each side's best of {a.rounds} rounds" if a.rounds > 1 else ""
        print(f"# {a.suite}: {len(rows)} cases, {a.threads} threads{best}; ref/tessera time ratio "
              f"min {min(ratios):.2f}, median {sorted(ratios)[len(ratios) // 2]:.2f}")

    def share(side):
        steal, total = stolen[side]
        return f"{100 * steal / total:.1f}%" if total else "n/a"
    print(f"# CPU time stolen by the host (/proc/stat steal) while each side ran: tessera "
          f"{share('ours')}, reference {share('refs')}")


if __name__ == "__main__":
    main()
