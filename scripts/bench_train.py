"""Training throughput (images per second) of primia's networks rebuilt in PyTorch, for scripts/bench-train.sh.

Usage: bench_train.py MODEL STEPS [--batch B] [--threads T]
MODEL is cnn (the default compact CNN) or resnet18, both at 28x28 with one
input channel and two classes, built layer for layer as in model/src/nets.rs:
bias-free 3x3 convolutions, GroupNorm (eps 1e-5), ReLU, 2x2 max-pooling,
global average pooling and a linear head. One training step is what
primia's Trainer does without augmentation: input normalisation,
class-weighted cross-entropy, backward, gradient-norm clipping at 5 and
AdamW (lr 2e-3, betas 0.9/0.999, eps 1e-8, decoupled weight decay 5e-4 on
convolution and linear weights only). Prints one line:
`torch model=<name> batch=<b> cpu_ms_per_img=<c> img_s=<x>` (CPU time of
all threads per image, spinning included).
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvNormRelu(nn.Module):
    def __init__(self, c_in, c_out, kernel, stride, groups):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.norm = nn.GroupNorm(groups, c_out, eps=1e-5)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class CompactCnn(nn.Module):
    """Three stages of two conv3x3+GroupNorm+ReLU (16, 32, 64 channels), 2x2 max-pool between."""

    def __init__(self, classes=2):
        super().__init__()
        blocks, c = [], 1
        for w in (16, 32, 64):
            g = min(8, w // 4)
            blocks.append(nn.Sequential(ConvNormRelu(c, w, 3, 1, g), ConvNormRelu(w, w, 3, 1, g)))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        for b, block in enumerate(self.blocks):
            if b > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
        return self.head(x.mean((2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = ConvNormRelu(c_in, c_out, 3, stride, 32)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(32, c_out, eps=1e-5)
        nn.init.zeros_(self.norm2.weight)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False), nn.GroupNorm(32, c_out, eps=1e-5)
            )

    def forward(self, x):
        y = self.norm2(self.conv2(self.conv1(x)))
        s = x if self.down is None else self.down(x)
        return F.relu(y + s)


class ResNet18(nn.Module):
    """ResNet-18 with GroupNorm and the small-image stem (3x3, stride 1, no max-pool), as at 28x28."""

    def __init__(self, classes=2):
        super().__init__()
        self.stem = ConvNormRelu(1, 64, 3, 1, 32)
        layers, c = [], 64
        for li, w in enumerate((64, 128, 256, 512)):
            for bi in range(2):
                layers.append(BasicBlock(c, w, 2 if li > 0 and bi == 0 else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=["cnn", "resnet18"])
    p.add_argument("steps", type=int)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = CompactCnn() if a.model == "cnn" else ResNet18()
    decay = [q for q in net.parameters() if q.dim() >= 2]
    no_decay = [q for q in net.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    n = a.batch * 8
    images = torch.rand(n, 1, 28, 28)
    labels = torch.randint(0, 2, (n,))
    class_w = torch.ones(2)

    def step(i):
        lo = (i * a.batch) % n
        x = (images[lo : lo + a.batch] - 0.5) / 0.25
        y = labels[lo : lo + a.batch]
        loss = F.cross_entropy(net(x), y, weight=class_w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        return loss

    for i in range(2):
        step(i)
    t = time.perf_counter()
    cpu = time.process_time()
    for i in range(a.steps):
        loss = step(i)
    loss.item()
    img_s = a.steps * a.batch / (time.perf_counter() - t)
    cpu_ms = (time.process_time() - cpu) * 1e3 / (a.steps * a.batch)
    print(f"torch model={a.model} batch={a.batch} cpu_ms_per_img={cpu_ms:.3f} img_s={img_s:.1f}", flush=True)


if __name__ == "__main__":
    main()
