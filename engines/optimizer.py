"""ES update rules on every engine alike: the paper's plain step, momentum, Adam (engines.es_state uses it).

The optimizer state (momentum, Adam's moments) is fp32, per HF tensor, on the engine's device, and goes
into checkpoints (es_optimizer.state, beside the weights) so a resumed run continues bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engines.variant import UpdateOptions

OPTIMIZER_FILE = "es_optimizer.state"  # safetensors, named so weight loaders (*.safetensors) skip it
class Optimizer:
    """The update rule applied to g = sum_i coeff_i eps_i, per tensor, in fp32 on every engine alike.

    sgd (the paper's): theta += g, the coefficients already hold alpha/N * f_i. momentum:
    m = mu m + g, theta += alpha m. adam: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    theta += alpha m_hat / (sqrt(v_hat) + eps). Weight decay is decoupled: theta -= alpha lambda theta.
    The options of each update come from the update log, so a replay takes the same steps."""

    def __init__(self, master: dict[str, torch.Tensor]):
        self.master = master
        self.state: dict[str, torch.Tensor] = {}  # "<name>#m", "<name>#v"

    def step(self, name: str, master: torch.Tensor, g: torch.Tensor, options: UpdateOptions) -> None:
        alpha = float(options.alpha)
        if options.weight_decay:
            master.mul_(1 - alpha * float(options.weight_decay))
        if options.optimizer == "sgd":
            master.add_(g)
            return
        m = self._moment(name, "m", g)
        if options.optimizer == "momentum":
            m.mul_(float(options.momentum)).add_(g)
            g.copy_(m).mul_(alpha)
        else:  # adam (UpdateOptions admits nothing else)
            b1, b2, t = float(options.beta1), float(options.beta2), int(options.step)
            v = self._moment(name, "v", g)
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denominator = (v / (1 - b2**t)).sqrt_().add_(float(options.eps))
            g.copy_(m).div_(denominator).mul_(alpha / (1 - b1**t))
        master.add_(g)

    def _moment(self, name: str, which: str, like: torch.Tensor) -> torch.Tensor:
        key = f"{name}#{which}"
        if key not in self.state:
            self.state[key] = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        return self.state[key]

    def save(self, directory: Path) -> None:
        if self.state:
            from safetensors.torch import save_file

            save_file({k: v.contiguous().cpu() for k, v in self.state.items()}, str(Path(directory) / OPTIMIZER_FILE))

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        device = next(iter(self.master.values())).device
        self.state = {k: v.to(device) for k, v in load_file(str(path)).items()}
