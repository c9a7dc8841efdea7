"""PyTorch reference of CLIP's `seed` configuration (the CLIP-from-scratch article's model),
to run side by side with `tessera train clip --config seed`.

Same architecture as src/models/{vit,clip}.rs (ViT width 9, patch 14, 3 layers, 3 heads;
byte-level text transformer width 32, 4 layers, 8 heads, length 32; embedding 32; 65,370
parameters), the same data (Fashion-MNIST IDX files, pixels / 255, one caption per class),
Adam lr 1e-3, batch 128, shuffled each epoch, last partial batch kept (469 steps per epoch).
Each image's caption goes through the text encoder, as in the article.

Usage:
  python3 benches/reference/clip_seed.py [--data ../shared/data] [--threads 2]
      times training steps: median ms/step over 50 steps after 10 of warm-up, and the implied
      epoch time (469 steps)
  python3 benches/reference/clip_seed.py --train [--epochs 12]
      trains, printing each epoch's time and the zero-shot test accuracy
"""
import argparse, gzip, math, os, struct, time
import torch
import torch.nn as nn
import torch.nn.functional as F

CAPTIONS = ["An image of a t-shirt/top", "An image of trousers", "An image of a pullover",
            "An image of a dress", "An image of a coat", "An image of a sandal",
            "An image of a shirt", "An image of a sneaker", "An image of a bag",
            "An image of an ankle boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return torch.frombuffer(bytearray(data[16:16 + n * rows * cols]), dtype=torch.uint8).reshape(n, 1, rows, cols)
    return torch.frombuffer(bytearray(data[8:8 + n]), dtype=torch.uint8)


def sinusoidal(length, width):
    pe = torch.zeros(length, width)
    for pos in range(length):
        for i in range(width):
            if i % 2 == 0:
                pe[pos][i] = math.sin(pos / (10000 ** (i / width)))
            else:
                pe[pos][i] = math.cos(pos / (10000 ** ((i - 1) / width)))
    return pe


class AttentionHead(nn.Module):
    def __init__(self, width, head_size):
        super().__init__()
        self.head_size = head_size
        self.query = nn.Linear(width, head_size)
        self.key = nn.Linear(width, head_size)
        self.value = nn.Linear(width, head_size)

    def forward(self, x, mask=None):
        q, k, v = self.query(x), self.key(x), self.value(x)
        a = q @ k.transpose(-2, -1) / (self.head_size ** 0.5)
        if mask is not None:
            a = a.masked_fill(mask == 0, float("-inf"))
        return torch.softmax(a, dim=-1) @ v


class MultiHeadAttention(nn.Module):
    def __init__(self, width, n_heads):
        super().__init__()
        self.W_o = nn.Linear(width, width)
        self.heads = nn.ModuleList([AttentionHead(width, width // n_heads) for _ in range(n_heads)])

    def forward(self, x, mask=None):
        return self.W_o(torch.cat([h(x, mask=mask) for h in self.heads], dim=-1))


class TransformerEncoder(nn.Module):
    def __init__(self, width, n_heads, r_mlp=4):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.mha = MultiHeadAttention(width, n_heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width * r_mlp), nn.GELU(),
                                 nn.Linear(width * r_mlp, width))

    def forward(self, x, mask=None):
        x = x + self.mha(self.ln1(x), mask=mask)
        return x + self.mlp(self.ln2(x))


def tokenize(text, max_len=32):
    out = chr(2) + text + chr(3)
    out = out + chr(0) * (max_len - len(out))
    tokens = torch.IntTensor(list(out.encode("utf-8")))
    n = len(text) + 2
    mask = torch.cat((torch.ones(n), torch.zeros(max_len - n))).int()
    return tokens, mask


class TextEncoder(nn.Module):
    def __init__(self, vocab, width, max_len, n_heads, n_layers, emb_dim):
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.register_buffer("pe", sinusoidal(max_len, width).unsqueeze(0))
        self.encoder = nn.ModuleList([TransformerEncoder(width, n_heads) for _ in range(n_layers)])
        self.projection = nn.Parameter(torch.randn(width, emb_dim))

    def forward(self, text, mask):
        x = self.embedding(text) + self.pe
        for layer in self.encoder:
            x = layer(x, mask=mask)
        x = x[torch.arange(text.shape[0]), torch.sub(torch.sum(mask[:, 0], dim=1), 1)]
        x = x @ self.projection
        return x / torch.norm(x, dim=-1, keepdim=True)


class ImageEncoder(nn.Module):
    def __init__(self, width, img_size, patch_size, n_channels, n_layers, n_heads, emb_dim):
        super().__init__()
        n_patches = (img_size // patch_size) ** 2
        self.linear_project = nn.Conv2d(n_channels, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.register_buffer("pe", sinusoidal(n_patches + 1, width).unsqueeze(0))
        self.encoder = nn.ModuleList([TransformerEncoder(width, n_heads) for _ in range(n_layers)])
        self.projection = nn.Parameter(torch.randn(width, emb_dim))

    def forward(self, x):
        x = self.linear_project(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.size(0), -1, -1), x), dim=1) + self.pe
        for layer in self.encoder:
            x = layer(x)
        x = x[:, 0, :] @ self.projection
        return x / torch.norm(x, dim=-1, keepdim=True)


class CLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = ImageEncoder(9, 28, 14, 1, 3, 3, 32)
        self.text_encoder = TextEncoder(256, 32, 32, 8, 4, 32)
        self.temperature = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def forward(self, image, text, mask):
        i_e = self.image_encoder(image)
        t_e = self.text_encoder(text, mask=mask)
        logits = (i_e @ t_e.transpose(-2, -1)) * torch.exp(self.temperature)
        labels = torch.arange(logits.shape[0])
        return (F.cross_entropy(logits.transpose(-2, -1), labels) + F.cross_entropy(logits, labels)) / 2


def class_tables():
    """The captions' tokens and masks, one row per class: ([10, 32] int, [10, 32] int)."""
    toks = [tokenize(c) for c in CAPTIONS]
    return torch.stack([t for t, _ in toks]), torch.stack([m for _, m in toks])


def train_step(model, opt, images, labels, class_tokens, class_masks):
    """One step of the article's training loop: every image's caption goes through the text
    encoder. Returns the loss."""
    # The article's dataset returns each key mask repeated over the query rows: [B, T, T].
    mask = class_masks[labels].unsqueeze(1).repeat(1, 32, 1)
    loss = model(images, class_tokens[labels], mask)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "../../../shared/data"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train", action="store_true")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=60, help="timed steps (the first 10 are warm-up)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    d = os.path.join(a.data, "fashion-mnist")
    if not os.path.isdir(d):
        d = a.data
    x_train = read_idx(os.path.join(d, "train-images-idx3-ubyte.gz")).float() / 255
    y_train = read_idx(os.path.join(d, "train-labels-idx1-ubyte.gz")).long()
    x_test = read_idx(os.path.join(d, "t10k-images-idx3-ubyte.gz")).float() / 255
    y_test = read_idx(os.path.join(d, "t10k-labels-idx1-ubyte.gz")).long()
    class_tokens, class_masks = class_tables()

    model = CLIP()
    print(f"parameters {sum(p.numel() for p in model.parameters())} "
          f"(image {sum(p.numel() for p in model.image_encoder.parameters())}, "
          f"text {sum(p.numel() for p in model.text_encoder.parameters())})")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch, n = 128, len(y_train)
    steps_per_epoch = math.ceil(n / batch)

    def step(idx):
        return train_step(model, opt, x_train[idx], y_train[idx], class_tokens, class_masks)

    def zero_shot():
        with torch.no_grad():
            mask = class_masks.unsqueeze(1).repeat(1, 32, 1)
            t = model.text_encoder(class_tokens, mask=mask)
            correct = 0
            for s in range(0, len(y_test), 1000):
                i = model.image_encoder(x_test[s:s + 1000])
                correct += int(((i @ t.T).argmax(1) == y_test[s:s + 1000]).sum())
        return correct / len(y_test)

    if not a.train:
        perm = torch.randperm(n)
        times = []
        for s in range(a.steps):
            t0 = time.perf_counter()
            step(perm[s * batch:(s + 1) * batch])
            times.append(time.perf_counter() - t0)
        ms = sorted(times[10:])[len(times[10:]) // 2] * 1e3
        print(f"torch clip seed: {ms:.1f} ms/step (median of {len(times[10:])}, batch {batch}, {a.threads} threads), "
              f"epoch ~{ms * steps_per_epoch / 1e3:.1f} s ({steps_per_epoch} steps)")
        return
    print(f"untrained zero-shot {zero_shot():.4f}")
    for epoch in range(a.epochs):
        perm = torch.randperm(n)
        t0, total = time.perf_counter(), 0.0
        for s in range(steps_per_epoch):
            total += step(perm[s * batch:(s + 1) * batch])
        secs = time.perf_counter() - t0
        print(f"epoch {epoch + 1}: loss {total / steps_per_epoch:.4f}, {secs:.1f} s "
              f"({secs / steps_per_epoch * 1e3:.1f} ms/step), zero-shot {zero_shot():.4f}", flush=True)


if __name__ == "__main__":
    main()
