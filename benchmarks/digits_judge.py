"""Judge `vqcodec generate --model digits` samples with a small CNN classifier.

The classifier is trained on mnist5k's training split with an 11th class, "not a digit",
and then reads samples of `vqcodec generate` for several seeds: the fraction it classifies
with confidence >= 0.9 (as a digit), the class histogram, the largest class share.

    python benchmarks/digits_judge.py [--model digits] [--seeds 0,1,2,3,4] [-n 64] [--json FILE]
    python benchmarks/digits_judge.py --images samples.npz     # judge any (N, 28, 28) uint8 array

Split: mnist5k.npz holds 500 digits of each class *in class order* (its last 500 are all 9s),
so the held-out digits are every 10th one (50 per class), the same 500 the digits model
holds out (`held_out_spread` in configs/digits.json); the classifier trains on the other 4500.

"Not a digit" examples are made afresh every epoch, as many as the digits, from three kinds
in equal parts:
  - scrawls: 2-4 random quadratic Bezier strokes of random width (drawn at 4x, blurred and
    reduced, so anti-aliased like MNIST strokes);
  - shuffles: a training digit cut in 7x7 tiles that are permuted;
  - overlays: two digits of different classes, one shifted, drawn over each other.
(A fourth kind, chimeras, the top or left part of one digit joined to the rest of another
class's, was tried and dropped: too many of them are real digits, and with them the judge
was confident on only 56% of the real held-out digits.)
Digits are augmented with shifts of up to 2 pixels and, half the time, a Gaussian blur (the
codec's reconstructions are a little soft, and soft is still a digit).

The classifier (version 3): five 3x3 convolutions with batch norm (32, 32, 64, 64, 128
channels, two max-pools) and a 256-unit head, 20 epochs. Version 2 (three convolutions of 16,
32, 64 channels, 12 epochs) was less accurate (96.2 % against 97.4 % held out) and read only
91.2 % of the real held-out digits as confident (version 3: 96.6 %): it failed samples
nearly as often as real digits. docs/EXPERIMENTS.md has both judges' numbers.

The trained classifier is cached in runs/digits_judge.pt (retrained when JUDGE_VERSION changes).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "mnist5k" / "mnist5k.npz"
CACHE = ROOT / "runs" / "digits_judge.pt"
HELD_OUT = 500
NOT_A_DIGIT = 10
CONFIDENT = 0.9
BATCH = 64
NEGATIVE_KINDS = ("scrawl", "shuffle", "overlay")


def split(path: Path = DATA):
    """(train images, train labels, held-out images, held-out labels): every 10th held out."""
    with np.load(path) as archive:
        images, labels = archive["images"], archive["labels"].astype(np.int64)
    step = len(images) // HELD_OUT
    held = np.zeros(len(images), dtype=bool)
    held[step - 1::step] = True
    return images[~held], labels[~held], images[held], labels[held]


def _block(inputs: int, outputs: int) -> list:
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]


class Judge(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*_block(1, 32), *_block(32, 32), nn.MaxPool2d(2),
                                      *_block(32, 64), *_block(64, 64), nn.MaxPool2d(2), *_block(64, 128))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 49, 256), nn.ReLU(),
                                  nn.Dropout(0.3), nn.Linear(256, 11))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ------------------------------------------------------------------ "not a digit" examples


def _scrawl(rng: np.random.Generator) -> np.ndarray:
    big = Image.new("L", (112, 112), 0)
    draw = ImageDraw.Draw(big)
    for _ in range(rng.integers(2, 5)):
        p0, p1, p2 = (rng.uniform(16, 96, 2) for _ in range(3))
        t = np.linspace(0, 1, 24)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        draw.line([tuple(p) for p in curve], fill=255, width=int(rng.integers(6, 14)), joint="curve")
    return np.asarray(big.filter(ImageFilter.GaussianBlur(2)).resize((28, 28), Image.LANCZOS))


def _shuffle(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tiles = digit.reshape(4, 7, 4, 7).transpose(0, 2, 1, 3).reshape(16, 7, 7)
    tiles = tiles[rng.permutation(16)]
    return tiles.reshape(4, 4, 7, 7).transpose(0, 2, 1, 3).reshape(28, 28)


def _overlay(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shifted = np.roll(b, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
    return np.maximum(a, shifted)


def negatives(images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((count, 28, 28), dtype=np.uint8)
    for i in range(count):
        kind = i % len(NEGATIVE_KINDS)
        a = int(rng.integers(len(images)))
        if kind == 0:
            out[i] = _scrawl(rng)
        elif kind == 1:
            out[i] = _shuffle(images[a], rng)
        else:
            other = np.flatnonzero(labels != labels[a])
            b = images[int(rng.choice(other))]
            out[i] = _overlay(images[a], b, rng)
    return out


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shifts of up to 2 pixels, and a Gaussian blur (sigma 0.3-1) half the time."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        image = np.roll(image, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
        if rng.random() < 0.5:
            image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0))))
        out[i] = image
    return out


def as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).unsqueeze(1)


# ------------------------------------------------------------------ training


JUDGE_VERSION = 3  # bump whenever the classifier, its data or its training change: retrains the cache


def _fingerprint() -> str:
    return f"judge-{JUDGE_VERSION}"


def train_judge(epochs: int = 20, seed: int = 0, log=print) -> tuple[Judge, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels, held, held_labels = split()
    model = Judge()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps_per_epoch = math.ceil(2 * len(images) / BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * steps_per_epoch)
    started = time.perf_counter()
    for epoch in range(epochs):
        x = np.concatenate([augment(images, rng), negatives(images, labels, len(images), rng)])
        y = np.concatenate([labels, np.full(len(images), NOT_A_DIGIT)])
        order = rng.permutation(len(x))
        model.train()
        for start in range(0, len(x), BATCH):
            batch = order[start:start + BATCH]
            loss = F.cross_entropy(model(as_input(x[batch])), torch.from_numpy(y[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        log(f"judge epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}")
    model.eval()
    probabilities = predict(model, held)
    held_negatives = negatives(held, held_labels, len(held), np.random.default_rng(seed + 1))
    negative_probabilities = predict(model, held_negatives)
    kinds = np.arange(len(held)) % len(NEGATIVE_KINDS)
    record = {
        "held_out_accuracy": float((probabilities.argmax(1) == held_labels).mean()),
        "held_out_confident_fraction": float(confident(probabilities).mean()),
        "held_out_negatives_rejected": {name: float((negative_probabilities[kinds == k].argmax(1) == NOT_A_DIGIT).mean())
                                        for k, name in enumerate(NEGATIVE_KINDS)},
        "epochs": epochs, "train_seconds": round(time.perf_counter() - started, 1),
        "train_images": int(len(images)), "held_out_images": int(len(held)),
    }
    return model, record


def load_judge(retrain: bool = False, log=print) -> tuple[Judge, dict]:
    if CACHE.exists() and not retrain:
        state = torch.load(CACHE, weights_only=False)
        if state.get("fingerprint") == _fingerprint():
            model = Judge()
            model.load_state_dict(state["model"])
            return model.eval(), state["record"]
    model, record = train_judge(log=log)
    CACHE.parent.mkdir(exist_ok=True)
    torch.save({"model": model.state_dict(), "record": record, "fingerprint": _fingerprint()}, CACHE)
    return model, record


@torch.no_grad()
def predict(model: Judge, images: np.ndarray) -> np.ndarray:
    """(N, 11) class probabilities of (N, 28, 28) uint8 images."""
    return torch.softmax(model(as_input(images)), dim=1).numpy()


def confident(probabilities: np.ndarray) -> np.ndarray:
    """Whether each image is read as a digit (not class 10) with probability >= 0.9."""
    return (probabilities.max(1) >= CONFIDENT) & (probabilities.argmax(1) != NOT_A_DIGIT)


def judge(probabilities: np.ndarray) -> dict:
    classes = probabilities.argmax(1)
    histogram = np.bincount(classes, minlength=11)
    digits = histogram[:10]
    return {
        "samples": int(len(classes)),
        "confident_fraction": float(confident(probabilities).mean()),
        "mean_confidence": float(probabilities.max(1).mean()),
        "histogram": histogram.tolist(),  # classes 0-9, then "not a digit"
        "classes_present": int((digits > 0).sum()),
        "max_class_share": float(digits.max() / len(classes)),
        "max_class": int(digits.argmax()),
    }


def generated(model: str, count: int, seed: int, temperature: float | None, quality: int | None = None,
              guidance: float | None = None) -> np.ndarray:
    from vqcodec import codec

    pictures = codec.generate(count, model=model, seed=seed, temperature=temperature, quality=quality,
                              guidance=guidance)
    return np.stack([np.asarray(p.convert("L").resize((28, 28))) for p in pictures])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("-t", "--temperature", type=float, default=None, help="default: the model's own")
    parser.add_argument("-q", "--quality", type=int, default=None, help="stages sampled; default: the model's own")
    parser.add_argument("-g", "--guidance", type=float, default=None, help="default: the model's own")
    parser.add_argument("--images", type=Path,
                        help="judge an .npz with an 'images' (N, 28, 28) uint8 array instead, in sets of n")
    parser.add_argument("--retrain", action="store_true", help="retrain the classifier even if cached")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, record = load_judge(args.retrain, log=lambda line: print(line, file=sys.stderr))
    print(f"judge: held-out accuracy {record['held_out_accuracy']:.1%} on {record['held_out_images']} digits "
          f"(confident >= {CONFIDENT}: {record['held_out_confident_fraction']:.1%}); held-out non-digits "
          "rejected: " + ", ".join(f"{k} {v:.0%}" for k, v in record["held_out_negatives_rejected"].items()))
    results = {"judge": record, "runs": []}
    if args.images:  # in runs of n, one per seed
        array = np.load(args.images)["images"]
        sets = [(f"{args.images.name}[{i}:{i + args.n}]", array[i:i + args.n]) for i in range(0, len(array), args.n)]
    else:
        sets = [(f"seed {s}", None) for s in map(int, args.seeds.split(","))]
    pooled = []
    for name, images in sets:
        started = time.perf_counter()
        if images is None:
            images = generated(args.model, args.n, int(name.split()[1]), args.temperature, args.quality,
                               args.guidance)
        probabilities = predict(model, images)
        pooled.append(probabilities)
        result = {"set": name, **judge(probabilities), "seconds": round(time.perf_counter() - started, 2)}
        results["runs"].append(result)
        print(f"{name}: confident {result['confident_fraction']:.1%}, mean confidence {result['mean_confidence']:.2f}, "
              f"classes {result['classes_present']}/10, max share {result['max_class_share']:.1%} "
              f"(class {result['max_class']}); histogram 0-9,x: {result['histogram']}")
    if len(pooled) > 1:
        results["pooled"] = judge(np.concatenate(pooled))
        p = results["pooled"]
        print(f"all: confident {p['confident_fraction']:.1%}, classes {p['classes_present']}/10, "
              f"max share {p['max_class_share']:.1%} (class {p['max_class']}); histogram 0-9,x: {p['histogram']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
