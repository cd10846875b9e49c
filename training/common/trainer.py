"""The training loop the networks share: AdamW without weight decay on biases and norms, a warmed-up cosine
learning rate, the weight EMA (what is validated and exported), one validation per epoch, a CSV log, resumable
`last.pt` / `best.pt` with every random state, and a hook that exports the EMA net when the selection score
improves. A trainer gives its data, its losses and its validation; `fit` does the rest.

Checkpoints hold: model, ema, optimizer, scheduler, epoch, step, best, metrics, config, args and rng (python, numpy,
torch), the keys the committed checkpoints in models/checkpoints/ were written with, so they resume unchanged.
A trainer with a schedule, batches, log or checkpoint keys of its own (the SFN, the re-ID net) passes them through
fit's optional arguments; left out, every one keeps the behaviour above.
"""
import csv
import json
import math
import os
import random
import time

import numpy as np
import torch

from common import EMA, atomic_torch_save, worker_init


def adamw(model, lr, wd, scaled=None):
    """AdamW with weight decay on the weight matrices only; `scaled` = (name prefixes, lr factor) puts those
    parameters in a group of their own at that share of the learning rate, without weight decay."""
    decay, no_decay, own = [], [], []
    for name, p in model.named_parameters():
        if scaled and name.startswith(tuple(scaled[0])):
            own.append(p)
        else:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0}]
    if own:
        groups.append({"params": own, "weight_decay": 0, "lr": lr * scaled[1]})
    return torch.optim.AdamW(groups, lr=lr)


def warm_cosine(optimizer, total, warm, floor=0.02):
    """linear warm-up over `warm` steps, then a cosine from 1 down to `floor` at step `total` (each group's own lr)."""
    def factor(it):
        if it < warm:
            return (it + 1) / warm
        t = min(1.0, (it - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Run:
    """A training run's folder: last.pt (every epoch), best.pt (on improvement), log.csv."""

    def __init__(self, out, model, ema, optimizer, scheduler, args, save_extra=None, on_resume=None):
        os.makedirs(out, exist_ok=True)
        self.out, self.model, self.ema, self.opt, self.sched, self.args = out, model, ema, optimizer, scheduler, args
        self.save_extra, self.on_resume = save_extra, on_resume
        self.last, self.best_path = os.path.join(out, "last.pt"), os.path.join(out, "best.pt")
        self.log_path = os.path.join(out, "log.csv")

    def resume(self):
        """-> (first epoch, step, best score): from last.pt when --resume finds one, else a fresh start."""
        if not (getattr(self.args, "resume", False) and os.path.exists(self.last)):
            return 0, 0, -math.inf
        ck = torch.load(self.last, map_location="cpu", weights_only=False)
        self.model.load_state_dict(ck["model"])
        if self.ema is not None:
            self.ema.model.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        random.setstate(ck["rng"]["python"])
        np.random.set_state(ck["rng"]["numpy"])
        torch.set_rng_state(ck["rng"]["torch"])
        # checkpoints written by a trainer's own loop before it used fit may lack step / best: the scheduler's
        # step count, and on_resume(ck) -> the best score (it also restores the trainer's own keys)
        step, best = ck.get("step", self.sched.last_epoch), ck.get("best", -math.inf)
        if self.on_resume is not None:
            own = self.on_resume(ck)
            best = best if own is None else own
        print(f"resumed from {self.last}: epoch {ck['epoch']}, best {best}", flush=True)
        return ck["epoch"] + 1, step, best

    def save(self, epoch, step, best, metrics, improved):
        ck = {"model": self.model.state_dict(), "ema": self.ema.model.state_dict() if self.ema is not None else None,
              "optimizer": self.opt.state_dict(),
              "scheduler": self.sched.state_dict(), "epoch": epoch, "step": step, "best": best, "metrics": metrics,
              "config": self.model.config, "args": vars(self.args),
              "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}}
        if self.ema is None:
            del ck["ema"]
        if self.save_extra is not None:
            ck.update(self.save_extra())
        atomic_torch_save(ck, self.last)
        if improved:
            atomic_torch_save(ck, self.best_path)

    def log(self, row):
        """appends one row; a new log gets the row's keys as its header (an existing one keeps its own)."""
        new = not os.path.exists(self.log_path)
        with open(self.log_path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(list(row))
            w.writerow(list(row.values()))


def fit(model, data, losses, validate, args, *, parts, select, on_improve=None, log_every=25, warm_max=200,
        optimizer=None, device=None, batches=None, steps_per_epoch=None, lr_lambda=None, clip=10.0,
        clip_params=None, ema_decay=0.998, ema_own_count=False, on_epoch_start=None, metric_digits=5, log=None,
        save_extra=None, on_resume=None):
    """Trains `model` for args.epochs epochs of args.samples samples (batch args.batch) at args.lr (weight decay
    args.wd), resuming from args.out/last.pt with args.resume.

    data(epoch) -> a Dataset of that epoch's samples (deterministic per epoch: resuming continues the sequence);
    losses(model, x, targets) -> (total loss, [the parts named in `parts`]);
    validate(ema_model) -> dict of metrics (floats); select(metrics) -> the score best.pt and exporting follow;
    on_improve(ema_model, metrics, epoch): called when it improves (the export); what it returns is the log's
    `exported`.

    Optional, for trainers with loops of their own (left out: the behaviour above):
    batches(epoch) -> an iterable of (x, targets dict) for the epoch, instead of a DataLoader over data(epoch);
    steps_per_epoch: instead of args.samples // args.batch; lr_lambda(step) -> the multiplier of each group's lr,
    instead of the warmed-up cosine; clip / clip_params: the gradient-norm clip and what it covers (default the
    model's parameters); ema_decay (None: no EMA, the trained model is validated, saved and exported);
    ema_own_count: the EMA warms its decay up on its own update count (saved as ema_updates) instead of the global
    step; on_epoch_start(epoch) before each epoch's batches; metric_digits (None: metrics as validate returns
    them); log(info): writes the epoch's log instead of log.csv (info: epoch, step, lr, time_s, the mean loss and
    parts by name, metrics, improved, best, exported); save_extra() -> keys added to every checkpoint;
    on_resume(ck) restores them (and may return the best score, for checkpoints without `best`).
    Loss means are per batch, weighted by batch size when the batches differ in size."""
    device = device or torch.device(args.device)
    model.to(device)
    ema = EMA(model, ema_decay) if ema_decay is not None else None
    opt = optimizer or adamw(model, args.lr, args.wd)
    it_per_epoch = steps_per_epoch if steps_per_epoch is not None else args.samples // args.batch
    total = it_per_epoch * args.epochs
    if lr_lambda is not None:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    else:
        sched = warm_cosine(opt, total, min(warm_max, total // 10 + 1))

    def extra():
        own = save_extra() if save_extra is not None else {}
        return {**({"ema_updates": ema.updates} if ema_own_count else {}), **own}

    def resumed(ck):
        if ema_own_count:
            ema.updates = ck.get("ema_updates", sched.last_epoch)
        return on_resume(ck) if on_resume is not None else None

    run = Run(args.out, model, ema, opt, sched, args, extra, resumed)
    start, step, best = run.resume()
    print(f"{it_per_epoch} it/epoch, device {device}", flush=True)
    for epoch in range(start, args.epochs):
        t0 = time.time()
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        model.train()
        if batches is not None:
            loader = batches(epoch)
        else:
            loader = torch.utils.data.DataLoader(data(epoch), batch_size=args.batch, shuffle=False,
                                                 num_workers=args.workers, worker_init_fn=worker_init,
                                                 drop_last=True, prefetch_factor=4 if args.workers else None)
        sums, wsums = np.zeros(1 + len(parts)), np.zeros(1 + len(parts))
        nb, seen, sizes = 0, 0, set()
        for x, t in loader:
            x = x.to(device, non_blocking=True)
            t = {k: v.to(device, non_blocking=True) for k, v in t.items()}
            loss, terms = losses(model, x, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters() if clip_params is None else clip_params, clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model, None if ema_own_count else step)
            step += 1
            values = np.array([loss.item()] + [float(v) for v in terms])
            sums += values
            wsums += len(x) * values
            nb += 1
            seen += len(x)
            sizes.add(len(x))
            if nb % log_every == 0:
                a = sums / nb
                shown = " ".join(f"{n} {v:.4f}" for n, v in zip(["loss"] + list(parts), a))
                print(f"ep {epoch} it {nb}/{it_per_epoch} {shown} lr {sched.get_last_lr()[0]:.2e} "
                      f"{(time.time() - t0) / nb:.2f}s/it", flush=True)
        tv = time.time()
        net = ema.model if ema is not None else model
        metrics = {k: (round(float(v), metric_digits) if metric_digits is not None else v)
                   for k, v in validate(net).items()}
        score = select(metrics)
        improved = score > best
        if improved:
            best = score
        print(f"epoch {epoch} done in {tv - t0:.0f}s (+{time.time() - tv:.0f}s val): {json.dumps(metrics)}"
              f"{' *best*' if improved else ''}", flush=True)
        a = sums / max(nb, 1) if len(sizes) <= 1 else wsums / seen
        info = {"epoch": epoch, "step": step, "lr": sched.get_last_lr()[0], "time_s": time.time() - t0,
                **{n: float(v) for n, v in zip(["loss"] + list(parts), a)}, "metrics": metrics,
                "improved": improved, "best": best, "exported": None, "batches": nb, "samples": seen}
        if log is None:
            run.log({"epoch": epoch, "step": step, "lr": f"{sched.get_last_lr()[0]:.3e}",
                     "time_s": round(time.time() - t0, 1),
                     **{n: round(float(v), 5) for n, v in zip(["loss"] + list(parts), a)}, **metrics,
                     "best": int(improved)})
        run.save(epoch, step, best, metrics, improved)
        if improved and on_improve is not None:
            info["exported"] = on_improve(net, metrics, epoch)
        if log is not None:
            log(info)
    return net
