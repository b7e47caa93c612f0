"""Time trn_hybrid's parallel prefix scan against the step-by-step loop it replaces.

Shapes are those of a TRN layer: alpha [B, L, K, 1], drive [B, L, K, 2] (the complex state), float32.
Prints ms per call (median of --repeats) for the forward alone and for forward + backward (what a
training step pays), on CPU and, if present, CUDA, with the speed-up loop time / parallel time.

    python benchmarks/scan_speed.py [--batch 8] [--oscillators 256] [--lengths 256 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.archs.trn_hybrid import linear_scan


def sequential_scan(alpha: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """The reference: r_t = alpha_t r_{t-1} + drive_t, one Python step per position."""
    r, states = torch.zeros_like(drive[:, 0]), []
    for alpha_t, drive_t in zip(alpha.unbind(1), drive.unbind(1)):  # unbind: one backward, not one per step
        r = alpha_t * r + drive_t
        states.append(r)
    return torch.stack(states, dim=1)


def ms_per_call(fn, device: torch.device, repeats: int) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up (allocator, kernels)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--oscillators", type=int, default=256)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, cpu threads {torch.get_num_threads()}, "
          f"B={args.batch}, K={args.oscillators}, float32, median of {args.repeats}")
    print(f"{'device':<7}{'L':>6} | {'forward ms: parallel':>21}{'loop':>9}{'speed-up':>10} | "
          f"{'fwd+bwd ms: parallel':>21}{'loop':>9}{'speed-up':>10} | {'max |diff|':>10}")
    for device in devices:
        gen = torch.Generator(device=device).manual_seed(0)
        for length in args.lengths:
            shape = (args.batch, length, args.oscillators)
            alpha = torch.rand(*shape, 1, device=device, generator=gen).requires_grad_()
            drive = torch.randn(*shape, 2, device=device, generator=gen).requires_grad_()
            row = []
            for scan in (linear_scan, sequential_scan):
                with torch.no_grad():
                    row.append(ms_per_call(lambda: scan(alpha, drive), device, args.repeats))
            for scan in (linear_scan, sequential_scan):
                row.append(ms_per_call(lambda: scan(alpha, drive).sum().backward(), device, args.repeats))
            with torch.no_grad():
                diff = (linear_scan(alpha, drive) - sequential_scan(alpha, drive)).abs().max().item()
            fwd_par, fwd_loop, both_par, both_loop = row
            print(f"{device.type:<7}{length:>6} | {fwd_par:>21.2f}{fwd_loop:>9.2f}{fwd_loop / fwd_par:>9.2f}x | "
                  f"{both_par:>21.2f}{both_loop:>9.2f}{both_loop / both_par:>9.2f}x | {diff:>10.2e}")

if __name__ == "__main__":
    main()
