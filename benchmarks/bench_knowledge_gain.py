"""Speed of the knowledge-gain rank measure Z against a per-matrix NumPy/SciPy baseline.

Run from the repository root::

    python -m benchmarks.bench_knowledge_gain [--threads 1 2] [--repeats 5] [--baseline-repeats 2]

It times :func:`optuna_ext.metrics.knowledge_gain_rank` over all convolution layers of ResNet-18
and ResNet-34 (CIFAR stem and ImageNet stem) on CPU, against a straightforward implementation of
the reference algorithm (autoHyper's ``Metrics.evaluate`` with ``EVBMF``): per unfolding, a
NumPy SVD with singular vectors and ``scipy.optimize.minimize_scalar(method="bounded")``. The
weights are random low-rank-plus-noise tensors, so that the ranks are not all zero as at
initialization. It also times Z for a 16/32-channel two-convolution CNN against one training
epoch of that CNN on scikit-learn's digits. The table is printed and written, with the command,
to ``benchmarks/results/knowledge_gain_speed.md``; the raw numbers go to
``benchmarks/results/knowledge_gain_speed.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import json
import math
import os
from pathlib import Path
import platform
import sys
import time
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
import torch
from torch import nn

from optuna_ext.metrics import evbmf
from optuna_ext.metrics import knowledge_gain_rank
from optuna_ext.metrics import unfold
from optuna_ext.tasks._models import _BasicBlock


_RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------
# Minimal ResNet-18/34 (He et al. 2016) of the package's basic block; only the convolution
# shapes matter here.


class _ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, int, int, int], *, imagenet_stem: bool) -> None:
        super().__init__()
        if imagenet_stem:
            self.stem: nn.Module = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64))
        layers: list[nn.Module] = []
        in_channels = 64
        for stage, n_blocks in enumerate(blocks):
            channels = 64 * 2**stage
            for block in range(n_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(in_channels, channels, stride))
                in_channels = channels
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(torch.relu(self.stem(x)))
        return self.fc(out.mean(dim=(2, 3)))


def _resnet(depth: int, *, imagenet_stem: bool) -> _ResNet:
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth]
    return _ResNet(blocks, imagenet_stem=imagenet_stem)


def _make_trained_like(model: nn.Module, seed: int) -> None:
    """Replace each convolution weight by He-scaled noise plus, in two layers of three, a signal.

    The signal is a low-rank (CP) tensor ``sum_j a_j u_j (x) v_j (x) K_j`` with unit vectors
    over the output channels, the input channels and the kernel, so that both unfoldings have
    ``r = max(2, C_out // 8)`` signal components, with strengths spread around the noise's
    largest singular value: some are detected, some are not, as after a few epochs of training.
    Every third layer stays pure noise (rank 0), so that Z is neither 0 nor 1.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        convolutions = [p for p in model.parameters() if p.ndim == 4]
        for index, parameter in enumerate(convolutions):
            c_out, c_in, kh, kw = parameter.shape
            std = math.sqrt(2.0 / (c_in * kh * kw))
            noise = std * torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            if index % 3 == 2:
                parameter.copy_(noise.to(parameter.dtype))
                continue
            rank = max(2, c_out // 8)
            u, v, k = (_unit_rows(rank, size, generator) for size in (c_out, c_in, kh * kw))
            edge = std * max(
                math.sqrt(c_out) + math.sqrt(c_in * kh * kw),
                math.sqrt(c_in) + math.sqrt(c_out * kh * kw),
            )
            strength = edge * torch.empty(rank, dtype=torch.float64).uniform_(
                0.3, 3.0, generator=generator
            )
            signal = torch.einsum("j,jo,ji,jk->oik", strength, u, v, k).reshape(noise.shape)
            parameter.copy_((noise + signal).to(parameter.dtype))


def _unit_rows(n_rows: int, size: int, generator: torch.Generator) -> torch.Tensor:
    rows = torch.randn(n_rows, size, generator=generator, dtype=torch.float64)
    return rows / rows.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------
# Baseline: the reference algorithm, per unfolding, in NumPy/SciPy.


def _reference_objective(
    sigma2: float, n_rows: int, n_cols: int, s: np.ndarray, x_bar: float
) -> float:
    alpha = n_rows / n_cols
    x = s**2 / (n_cols * sigma2)
    signal = x[x > x_bar]
    noise = x[x <= x_bar]
    tau = 0.5 * (signal - (1 + alpha) + np.sqrt((signal - (1 + alpha)) ** 2 - 4 * alpha))
    value = np.sum(noise - np.log(noise)) + np.sum(signal - tau)
    value += np.sum(np.log((tau + 1) / signal)) + alpha * np.sum(np.log(tau / alpha + 1))
    return float(value + (n_rows - len(s)) * np.log(sigma2))


def _reference_evbmf(
    matrix: np.ndarray, s: np.ndarray, *, xatol: float = 1e-5, rescale: bool = False
) -> np.ndarray:
    """The reference ``EVBMF(Y)`` (H = L) given the singular values: the shrunk ones.

    With the defaults it is the reference; ``rescale=True`` divides by the RMS of the entries
    and a tiny ``xatol`` makes the search tolerance relative (the corrections this package
    makes). Raises scipy's ``ValueError`` when the search interval is empty, as the reference
    does.
    """
    n_rows, n_cols = matrix.shape
    alpha = n_rows / n_cols
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    scale = float(np.sum(s**2) / (n_rows * n_cols)) if rescale else 1.0
    searched = s / math.sqrt(scale)
    tail = int(min(math.ceil(n_rows / (1 + alpha)) - 1, n_rows)) - 1 + 1
    upper = np.sum(searched**2) / (n_rows * n_cols)
    lower = max(searched[tail] ** 2 / (n_cols * x_bar), np.mean(searched[tail:] ** 2) / n_cols)
    sigma2 = (
        scale
        * minimize_scalar(
            _reference_objective,
            args=(n_rows, n_cols, searched, x_bar),
            bounds=(lower, upper),
            method="bounded",
            options={"xatol": xatol},
        ).x
    )
    threshold = math.sqrt(n_cols * sigma2 * x_bar)
    kept = s[s > threshold]
    ratio = (n_rows + n_cols) * sigma2 / kept**2
    return (kept / 2) * (
        1 - ratio + np.sqrt((1 - ratio) ** 2 - 4 * n_rows * n_cols * sigma2**2 / kept**4)
    )


def _reference_z(model: nn.Module) -> tuple[float, list[int], float, list[int]]:
    """Z_t and the unfoldings' ranks, as ``Metrics.evaluate`` at epoch 0 computes them.

    Returns ``(z, ranks, seconds, corrected_ranks)``: ``seconds`` times the reference (SVD with
    singular vectors, then the search with ``xatol=1e-5``, per unfolding); ``corrected_ranks``
    reuse the SVD for an untimed search with the corrections of ``optuna_ext.metrics`` (tall
    unfoldings transposed, RMS rescaling, relative tolerance), for the rank comparison.
    """
    ranks: list[int] = []
    corrected_ranks: list[int] = []
    gains: list[float] = []
    seconds = 0.0
    for parameter in model.parameters():
        if parameter.ndim != 4:
            continue
        weight = parameter.detach().to(torch.float64).numpy()
        c_out, c_in = weight.shape[:2]
        for matrix, n_channels in (
            (weight.transpose(1, 0, 2, 3).reshape(c_in, -1), c_in),
            (weight.reshape(c_out, -1), c_out),
        ):
            start = time.perf_counter()
            _, s, _ = np.linalg.svd(matrix, full_matrices=False)  # the reference's torch.svd
            try:
                shrunk = _reference_evbmf(matrix, s)
            except ValueError:  # the reference's except-path at epoch 0
                shrunk = np.zeros(0)
            gains.append(float(np.sum(shrunk / shrunk.max())) / n_channels if len(shrunk) else 0.0)
            seconds += time.perf_counter() - start
            ranks.append(len(shrunk))
            wide = matrix if matrix.shape[0] <= matrix.shape[1] else matrix.T
            corrected = _reference_evbmf(wide, s, xatol=1e-12, rescale=True)
            corrected_ranks.append(len(corrected))
    z = float(np.mean(np.isclose(gains, 0)))
    return z, ranks, seconds, corrected_ranks


# --------------------------------------------------------------------------------------------
# Timing helpers.


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _our_ranks(model: nn.Module, tall_policy: str) -> tuple[float, list[int]]:
    snapshot = knowledge_gain_rank(model, tall_policy=tall_policy)
    ranks = [r for layer in snapshot.layers for r in (layer.rank3, layer.rank4)]
    return snapshot.z, ranks


def _bench_resnet(
    depth: int, imagenet_stem: bool, repeats: int, baseline_repeats: int
) -> dict[str, Any]:
    model = _resnet(depth, imagenet_stem=imagenet_stem)
    _make_trained_like(model, seed=depth)
    n_conv = sum(p.ndim == 4 for p in model.parameters())
    knowledge_gain_rank(model)  # warm-up
    # Interleave the runs, so that both see the same load from anything else on the machine.
    ours = baseline = math.inf
    for repeat in range(max(repeats, baseline_repeats)):
        if repeat < repeats:
            ours = min(ours, _best_time(lambda: knowledge_gain_rank(model), 1))
        if repeat < baseline_repeats:
            baseline_z, baseline_ranks, seconds, corrected_ranks = _reference_z(model)
            baseline = min(baseline, seconds)
    reproduction_ranks = [
        evbmf(unfold(p.detach(), mode), tall_policy="reference", rescale=False, atol=1e-5).rank
        for p in model.parameters()
        if p.ndim == 4
        for mode in (3, 4)
    ]
    z_reference_policy, ranks_reference_policy = _our_ranks(model, "reference")
    z_default, ranks_default = _our_ranks(model, "transpose")
    return {
        "model": f"ResNet-{depth} ({'ImageNet' if imagenet_stem else 'CIFAR'} stem)",
        "conv_layers": n_conv,
        "unfoldings": 2 * n_conv,
        "ours_s": ours,
        "baseline_s": baseline,
        "speedup": baseline / ours,
        "baseline_z": baseline_z,
        "ours_z_reference_policy": z_reference_policy,
        "ours_z_default": z_default,
        "nonzero_ranks_baseline": sum(r > 0 for r in baseline_ranks),
        "rank_agreement_reproduction_vs_baseline": _count_equal(
            reproduction_ranks, baseline_ranks
        ),
        "rank_agreement_reference_policy_vs_baseline": _count_equal(
            ranks_reference_policy, baseline_ranks
        ),
        "rank_agreement_default_vs_corrected_baseline": _count_equal(
            ranks_default, corrected_ranks
        ),
    }


def _count_equal(a: list[int], b: list[int]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


def _digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def _bench_digits(repeats: int) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    torch.manual_seed(0)
    model = _digits_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch_size = 64

    def epoch() -> None:
        model.train()
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            loss.backward()
            optimizer.step()

    epoch()  # warm-up
    for _ in range(10):
        knowledge_gain_rank(model)  # warm-up
    epoch_s = z_s = math.inf
    for _ in range(repeats):  # interleaved, as for the ResNets
        epoch_s = min(epoch_s, _best_time(epoch, 1))
        z_s = min(z_s, _best_time(lambda: knowledge_gain_rank(model), 20))
    return {
        "model": "2-conv CNN 16/32 channels (digits)",
        "samples_per_epoch": len(labels),
        "batch_size": batch_size,
        "epoch_s": epoch_s,
        "z_s": z_s,
        "z_fraction_of_epoch": z_s / epoch_s,
        "z_after_training": knowledge_gain_rank(model).z,
    }


def _blas_threads() -> str:
    from threadpoolctl import threadpool_info

    return ", ".join(f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info())


def _markdown(runs: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Knowledge-gain rank Z: speed on CPU",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"NumPy {np.__version__}. Times are the best of the repeats, ours and the baseline "
        "interleaved: other jobs shared the machine (load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end), so single runs "
        "varied by 2x or more.",
        "",
        "Baseline: the reference algorithm per unfolding (NumPy SVD with singular vectors, "
        "`scipy.optimize.minimize_scalar(method='bounded')` with its default absolute "
        "`xatol=1e-5`, no transposition of tall unfoldings, rank 0 when scipy rejects the "
        "bounds). Ours: `knowledge_gain_rank(model)` with the default options. Weights: "
        "He-scaled noise plus, in two layers of three, a random low-rank signal, so that ranks "
        "are nonzero and Z is neither 0 nor 1.",
        "",
        "Ranks equal: the number of unfoldings whose EVBMF rank equals the baseline's, for (a) "
        "`evbmf(..., tall_policy='reference', rescale=False, atol=1e-5)`, the reproduction of "
        "the reference's search; (b) `knowledge_gain_rank(model, tall_policy='reference')` "
        "(relative tolerance): it can differ where the baseline's absolute tolerance leaves "
        "its sigma^2 about 0.5% off and the threshold crosses a singular value; (c) ours with "
        "the default options against the baseline's search with the same corrections (tall "
        "unfoldings transposed, RMS rescaling, tight tolerance; untimed).",
    ]
    for run in runs:
        lines += [
            "",
            f"## {run['threads']} thread(s): torch {run['torch_threads']}, NumPy BLAS "
            f"{run['blas_threads']}",
            "",
            "| model | conv layers | baseline (s) | ours (s) | speed-up | Z baseline | Z ours "
            "(reference policy / default) | ranks equal (a) | ranks equal (b) | ranks equal "
            "(c) | nonzero ranks (baseline) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in run["resnets"]:
            n = r["unfoldings"]
            lines.append(
                f"| {r['model']} | {r['conv_layers']} | {r['baseline_s']:.2f} | "
                f"{r['ours_s']:.3f} | {r['speedup']:.1f}x | {r['baseline_z']:.4f} | "
                f"{r['ours_z_reference_policy']:.4f} / {r['ours_z_default']:.4f} | "
                f"{r['rank_agreement_reproduction_vs_baseline']}/{n} | "
                f"{r['rank_agreement_reference_policy_vs_baseline']}/{n} | "
                f"{r['rank_agreement_default_vs_corrected_baseline']}/{n} | "
                f"{r['nonzero_ranks_baseline']}/{n} |"
            )
        d = run["digits"]
        lines += [
            "",
            "| model | one training epoch (s) | Z (ms) | Z / epoch |",
            "| --- | ---: | ---: | ---: |",
            f"| {d['model']}, {d['samples_per_epoch']} samples, batch {d['batch_size']} | "
            f"{d['epoch_s']:.3f} | {1e3 * d['z_s']:.2f} | {100 * d['z_fraction_of_epoch']:.1f}% |",
        ]
    return "\n".join(lines) + "\n"


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats for ours")
    parser.add_argument(
        "--baseline-repeats", type=int, default=2, help="timing repeats for the baseline"
    )
    parser.add_argument(
        "--quick", action="store_true", help="ResNet-18 (CIFAR stem) only; do not save"
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[None],
        help="run everything once per thread count given, with that many threads for torch "
        "and for NumPy's BLAS/LAPACK (default: once, threads left as they are)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.baseline_repeats < 1:
        parser.error("--repeats and --baseline-repeats must be at least 1")

    configs = [(18, False), (18, True), (34, False), (34, True)]
    if args.quick:
        configs = configs[:1]
    runs = []
    for threads in args.threads:
        _set_threads(threads)
        run: dict[str, Any] = {
            "threads": "default" if threads is None else threads,
            "torch_threads": torch.get_num_threads(),
            "blas_threads": _blas_threads(),
            "resnets": [],
        }
        for depth, imagenet_stem in configs:
            result = _bench_resnet(depth, imagenet_stem, args.repeats, args.baseline_repeats)
            print(json.dumps(result), flush=True)
            run["resnets"].append(result)
        run["digits"] = _bench_digits(args.repeats)
        print(json.dumps(run["digits"]), flush=True)
        runs.append(run)

    command = "python -m benchmarks.bench_knowledge_gain" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    table = _markdown(runs, command)
    print(table)
    if not args.quick:
        _RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (_RESULTS_DIR / "knowledge_gain_speed.md").write_text(table)
        raw = {"command": command, "torch": torch.__version__, "runs": runs}
        (_RESULTS_DIR / "knowledge_gain_speed.json").write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
