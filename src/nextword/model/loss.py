"""The output layer and the loss in one step: the mean cross-entropy of the next tokens under the logits
x @ weightᵀ, computed without ever holding the [rows, vocab] logits in fp32.

`GPT.forward(idx, targets)` ends here. A caller that wants the logits as well takes `GPT.logits_and_loss`, the
plain cross-entropy over the logits; the two losses agree to fp32 rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows of the output layer's logits handled at once: on a CPU about 4 MiB of fp32, which stays in cache (2-core
# EPYC, default shape: 184 ms against 219 ms for 16 MiB chunks and 337 ms for the plain loss). Each chunk is a few
# short parallel regions, so this relies on OpenMP threads sleeping while they wait: with spinning threads and
# another process on the cores, 4 MiB chunks took twice as long as the plain loss. The `nextword` command line
# sets OMP_WAIT_POLICY=PASSIVE before torch loads. A program that uses the library should set it in its
# environment: the library cannot set it once torch has loaded. On a GPU about 256 MiB: fewer kernel launches,
# memory still bounded.
LOSS_CHUNK_BYTES = {"cpu": 1 << 22, "cuda": 1 << 28}


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `targets` under the logits `x @ weightᵀ`, with its gradient computed in the forward.

    The plain way (logits → fp32 copy → log-softmax → loss, and the same three steps backward) writes and reads
    the [rows, vocab] logits about six times in fp32; with an 8192-token vocabulary that is most of a small
    model's step on a CPU. Here the logits are made once in the compute dtype, then turned chunk by chunk, in
    fp32 and in cache, into the loss and into rows·∂loss/∂logits = softmax − one_hot, written over the logits.
    Backward is then two matrix multiplies, scaled by 1/rows after them. The loss is exact fp32 cross-entropy;
    the gradient has the rounding of the compute dtype, as it would under autocast anyway.

    With a soft-cap the loss is taken over cap·tanh(logits / cap), and the gradient through the cap is the
    softmax's times 1 − tanh².
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, targets: Tensor, dtype: torch.dtype, cap: float) -> Tensor:
        x, weight = x.to(dtype), weight.to(dtype)
        logits = x @ weight.t()  # [rows, vocab], overwritten below by the gradient
        rows, vocab = logits.shape
        chunk = max(1, LOSS_CHUNK_BYTES.get(x.device.type, 1 << 28) // (4 * vocab))
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = torch.zeros((), device=x.device, dtype=torch.float32)
        grad_log_p = torch.zeros(min(chunk, rows), vocab, device=x.device) if want_grad else None
        # The kernel below writes the compute dtype straight from fp32, except fp16 on a CPU, which it has no
        # kernel for: there it writes fp32, and copy_ rounds that to fp16.
        grad_dtype = torch.float32 if (x.device.type, dtype) == ("cpu", torch.float16) else dtype
        for begin in range(0, rows, chunk):
            part = logits[begin:begin + chunk]
            target = targets[begin:begin + chunk, None]
            tanh = torch.tanh(part.float() / cap) if cap else None
            log_p = torch.log_softmax(part if tanh is None else cap * tanh, dim=-1, dtype=torch.float32)
            total -= log_p.gather(-1, target).sum()
            if want_grad:
                grad_log_p.scatter_(-1, target, -1.0)
                # rows·∂loss/∂logits = p − one_hot, by aten's own log-softmax backward kernel (the 1/rows is
                # applied after the multiplies in backward, so that fp16 gradients do not underflow)
                if tanh is None:
                    part.copy_(torch.ops.aten._log_softmax_backward_data(grad_log_p[:len(part)], log_p, -1, grad_dtype))
                else:
                    grad = torch.ops.aten._log_softmax_backward_data(grad_log_p[:len(part)], log_p, -1, torch.float32)
                    part.copy_(grad * (1 - tanh.square()))
                grad_log_p.scatter_(-1, target, 0.0)
        if want_grad:
            ctx.save_for_backward(x, weight, logits)
            ctx.rows = rows
        return total / rows

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor):
        x, weight, grad_logits = ctx.saved_tensors
        scale = (grad_loss / ctx.rows).to(grad_logits.dtype)
        grad_x = (grad_logits @ weight) * scale if ctx.needs_input_grad[0] else None
        grad_weight = (grad_logits.t() @ x) * scale if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight, None, None, None


def softcap(logits: Tensor, cap: float) -> Tensor:
    """cap·tanh(logits / cap): about the logits themselves while small, never beyond ±cap (cap 0: unchanged).
    Gemma 2 caps its logits at 30, modded-nanogpt at 30 and lower."""
    return cap * torch.tanh(logits / cap) if cap else logits


def linear_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor, cap: float = 0.0) -> Tensor:
    """Mean cross-entropy of the logits x @ weightᵀ (soft-capped at `cap` when it is not 0) against targets, in
    fp32, without the fp32 logits. x: [..., d], weight: [V, d], targets: [...]. Under autocast the multiplies run
    in the autocast dtype."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    with torch.autocast(device, enabled=False):
        return LinearCrossEntropy.apply(x.reshape(-1, x.shape[-1]), weight, targets.reshape(-1), dtype, cap)
