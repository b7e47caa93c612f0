"""Causal convolution by FFT: the exact, parallel way the memory and oscillator mixers apply their kernels."""

import torch


def causal_fft_conv(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """y[..., t] = sum_{s<=t} kernel[..., s] u[..., t-s] along the last axis (broadcast elsewhere).

    Zero-padded to a power of two >= 2L so the circular FFT product is the linear convolution; the
    first L outputs are the causal ones. Runs in at least float32, also under autocast.
    """
    dtype = torch.promote_types(torch.promote_types(u.dtype, kernel.dtype), torch.float32)
    L = u.shape[-1]
    n = 1 << (2 * L - 1).bit_length()
    with torch.autocast(device_type=u.device.type, enabled=False):
        spectrum = torch.fft.rfft(u.to(dtype), n=n) * torch.fft.rfft(kernel.to(dtype), n=n)
        return torch.fft.irfft(spectrum, n=n)[..., :L]
