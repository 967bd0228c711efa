"""ProSparse's recovery fine-tune: progressive L1 on the MLP intermediate activations, stage by stage.

ProSparse (Song et al., 2024) makes a relufied model sparse in three steps: substitute the activation (here
`actsparse.relufy`), continue training with an L1 penalty on the activations whose factor λ rises
*progressively*, then shift the ReLU threshold (FATReLU, `fatrelu.py`). The progressive part is the schedule:
training runs in stages, and in stage i (T_i steps) λ rises from the previous stage's value λ_{i-1} to the
stage's target λ_i along a sine quarter-wave,

    λ(t) = λ_{i-1} + (λ_i - λ_{i-1}) · sin(π/2 · (t + 1) / T_i),      t = 0 .. T_i - 1 within the stage,

so it reaches λ_i exactly at the stage's last step and changes fastest at the stage's start, when the model has
just adapted to the previous level. A sudden large λ collapses activations faster than the language loss can
adapt; the stages let sparsity grow while the model keeps up.

The penalised tensors are captured with hooks on the `ReluGatedMLP` modules (a forward pre-hook on `down`
sees exactly the intermediate act(g)·up_act(u), the tensor whose zeros the compiler skips), so the recipe works
on any relufied model (TinyLlama, transformers causal LMs) without touching its forward.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..relufication import RelufyError, ReluGatedMLP, relu_mlps


@dataclass(frozen=True)
class Stage:
    """`steps` optimizer steps during which the L1 factor rises (sine-shaped) to `l1`."""

    steps: int
    l1: float

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"a stage needs at least one step, got {self.steps}")
        if not self.l1 >= 0:
            raise ValueError(f"the L1 factor must be >= 0, got {self.l1}")


def _stages(stages) -> list[Stage]:
    out = [s if isinstance(s, Stage) else Stage(*s) for s in stages]
    if not out:
        raise ValueError("recover needs at least one Stage(steps, l1)")
    return out


def l1_factor(step: int, stages) -> float:
    """λ at global step `step` (0-based): the sine warm-up within each stage; past the last stage its target."""
    previous = 0.0
    for stage in _stages(stages):
        if step < stage.steps:
            return previous + (stage.l1 - previous) * math.sin(0.5 * math.pi * (step + 1) / stage.steps)
        step -= stage.steps
        previous = stage.l1
    return previous


def l1_schedule(stages) -> list[float]:
    """λ for every step of the stages, in order."""
    stages = _stages(stages)
    return [l1_factor(step, stages) for step in range(sum(s.steps for s in stages))]


class ActivationCapture:
    """Collect the MLP intermediates of every `ReluGatedMLP` of a model while active (a context manager).

    `penalize="intermediate"`: the input of `down` (act(g) · up_act(u)); `"gate"`: the activated gate act(g)
    alone (ProSparse's choice for ReGLU, where up may be negative). `tensors` holds one entry per MLP call since
    the last `clear()`, in call order; `names` the matching module paths. With `detach`, values are detached
    (measurement); otherwise they keep their graph (the L1 penalty).
    """

    def __init__(self, model: nn.Module, penalize: str = "intermediate", detach: bool = False):
        if penalize not in ("intermediate", "gate"):
            raise ValueError(f"penalize must be 'intermediate' or 'gate', got {penalize!r}")
        self.mlps = relu_mlps(model)
        if not self.mlps:
            raise RelufyError(f"{type(model).__name__} has no ReluGatedMLP: run actsparse.relufy(model) first")
        self.penalize, self.detach = penalize, detach
        self.tensors: list[torch.Tensor] = []
        self.names: list[str] = []
        self.zeros: list[torch.Tensor] = []   # exact-zero fraction of the intermediate, per captured call
        self._handles = []

    def __enter__(self) -> ActivationCapture:
        for name, mlp in self.mlps:
            self._handles.append(mlp.down.register_forward_pre_hook(self._on_down(name)))
            if self.penalize == "gate":
                self._handles.append(mlp.gate.register_forward_hook(self._on_gate(name, mlp)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.tensors.clear()
        self.names.clear()
        self.zeros.clear()

    def _keep(self, name: str, t: torch.Tensor) -> None:
        self.tensors.append(t.detach() if self.detach else t)
        self.names.append(name)

    def _on_down(self, name: str):
        def hook(module, args):
            h = args[0]
            self.zeros.append((h.detach() == 0).float().mean())
            if self.penalize == "intermediate":
                self._keep(name, h)
        return hook

    def _on_gate(self, name: str, mlp: ReluGatedMLP):
        def hook(module, args, out):
            t = mlp.threshold
            self._keep(name, torch.relu(out) if t == 0 else torch.where(out > t, out, 0.0))
        return hook

    def l1(self) -> torch.Tensor:
        """Mean |activation| over each captured tensor, averaged over the tensors (layers)."""
        return torch.stack([t.float().abs().mean() for t in self.tensors]).mean()

    def sparsity(self) -> float:
        """Exact-zero fraction of the intermediates captured since `clear()` (averaged over calls)."""
        return float(torch.stack(self.zeros).mean()) if self.zeros else 0.0


class _NoCapture:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def clear(self) -> None:
        pass

    def l1(self) -> torch.Tensor:
        return torch.zeros(())

    def sparsity(self) -> float:
        return 0.0


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM on `(input_ids, targets)`; logits from a tensor, a tuple's first
    element, or a transformers output's `.logits`."""
    inputs, targets = batch
    return F.cross_entropy(_logits(model(inputs)).float().flatten(0, 1), targets.flatten())


def _logits(out) -> torch.Tensor:
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class RecoveryHistory:
    """What `recover` did: one record per step (loss, l1, l1_factor, lr, sparsity) and the periodic evals."""

    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.steps]

    @property
    def sparsities(self) -> list[float]:
        return [r["sparsity"] for r in self.steps]

    def to_dict(self) -> dict:
        return asdict(self)


def _batch_source(batches) -> Callable[[int], object]:
    if callable(batches):
        return batches
    state = {"it": iter(batches)}
    reiterable = state["it"] is not batches

    def next_batch(step: int):
        try:
            return next(state["it"])
        except StopIteration:
            if not reiterable:
                raise ValueError(f"the batch iterator ran out after {step} steps; pass a list (it is cycled), "
                                 "a callable step -> batch, or enough batches for every stage") from None
            state["it"] = iter(batches)
            try:
                return next(state["it"])
            except StopIteration:
                raise ValueError("recover got no batches") from None
    return next_batch


def _learning_rate(step: int, total: int, lr: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def recover(model: nn.Module, batches: Iterable | Callable[[int], object], stages, lr: float = 1e-3, *,
            loss_fn: Callable = lm_loss, penalize: str = "intermediate", warmup_steps: int = 0,
            min_lr_ratio: float = 0.1, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
            bf16: bool = False, eval_fn: Callable[[nn.Module], dict] | None = None, eval_every: int = 0,
            on_checkpoint: Callable[[nn.Module, RecoveryHistory], None] | None = None, checkpoint_every: int = 0,
            progress: bool = True) -> RecoveryHistory:
    """Fine-tune a relufied `model` with ProSparse's progressive L1; returns the history.

    batches: a list/iterable of batches (cycled when re-iterable) or a callable `step -> batch`; `loss_fn(model,
    batch)` gives the task loss (default: causal-LM cross-entropy on `(input_ids, targets)`). stages: `Stage`s
    (or `(steps, l1)` pairs) run in order; λ follows `l1_factor`. lr: AdamW peak learning rate, linear warm-up
    over `warmup_steps`, cosine decay to `min_lr_ratio · lr`; weight decay on matrices only. bf16: autocast the
    forward to bfloat16 (master weights stay float32). eval_fn(model) -> dict of metrics, every `eval_every`
    steps and at the end; `on_checkpoint(model, history)` likewise every `checkpoint_every` steps and at the end
    (e.g. `recipes.save_recovered`, so that a cut run leaves a usable model). The progress bar (tqdm) shows
    loss, L1, λ and the batch's exact-zero sparsity. A model without `ReluGatedMLP`s can only be fine-tuned with
    λ = 0 (the dense baseline a recovery is compared with).
    """
    from tqdm.auto import tqdm

    stages = _stages(stages)
    total = sum(s.steps for s in stages)
    next_batch = _batch_source(batches)
    matrices = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    others = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": weight_decay},
                                   {"params": others, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    device = next(model.parameters()).device.type
    history = RecoveryHistory()
    started = time.perf_counter()
    was_training = model.training
    model.train()
    bar = tqdm(range(total), desc="recover", disable=not progress, dynamic_ncols=True)
    if relu_mlps(model) or any(s.l1 > 0 for s in stages):
        capture = ActivationCapture(model, penalize)
    else:  # no ReluGatedMLP and no L1: plain fine-tuning (e.g. the dense baseline a recovery is compared with)
        capture = _NoCapture()
    with capture:
        for step in bar:
            factor = l1_factor(step, stages)
            rate = _learning_rate(step, total, lr, warmup_steps, min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = rate
            capture.clear()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                task = loss_fn(model, next_batch(step))
            l1 = capture.l1()
            loss = task + factor * l1
            if not torch.isfinite(loss):
                raise FloatingPointError(f"recover: the loss became {loss.item()} at step {step} (lr {rate:g}, "
                                         f"λ {factor:g}); lower the learning rate or the L1 factors")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            record = {"step": step, "loss": task.item(), "l1": l1.item(), "l1_factor": factor, "lr": rate,
                      "sparsity": capture.sparsity()}
            history.steps.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", l1=f"{record['l1']:.4f}", lam=f"{factor:.3g}",
                            sparsity=f"{record['sparsity']:.3f}")
            last = step + 1 == total
            if eval_fn is not None and ((eval_every and (step + 1) % eval_every == 0) or last):
                capture.clear()
                metrics = {"step": step + 1, **eval_fn(model)}
                model.train()
                history.evals.append(metrics)
                bar.write("eval " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in metrics.items()))
            if on_checkpoint is not None and ((checkpoint_every and (step + 1) % checkpoint_every == 0) or last):
                history.seconds = time.perf_counter() - started
                on_checkpoint(model, history)
    model.train(was_training)
    history.seconds = time.perf_counter() - started
    return history


@torch.no_grad()
def layer_sparsity(model: nn.Module, batches: Iterable, forward: Callable | None = None) -> dict[str, float]:
    """Per-MLP exact-zero fraction of the intermediate over `batches` (each an input tensor, or a tuple whose first
    element is the input), in eval mode; `forward(model, batch)` overrides how a batch is run."""
    was_training = model.training
    model.eval()
    zeros: dict[str, float] = {}
    counts: dict[str, int] = {}
    hooks = []

    def counter(name):
        def hook(module, args):
            h = args[0]
            zeros[name] = zeros.get(name, 0.0) + float((h == 0).sum())
            counts[name] = counts.get(name, 0) + h.numel()
        return hook

    mlps = relu_mlps(model)
    if not mlps:
        raise RelufyError(f"{type(model).__name__} has no ReluGatedMLP: run actsparse.relufy(model) first")
    try:
        for name, mlp in mlps:
            hooks.append(mlp.down.register_forward_pre_hook(counter(name)))
        for batch in batches:
            if forward is not None:
                forward(model, batch)
            else:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: zeros[name] / counts[name] for name, _ in mlps if counts.get(name)}
