"""The dense model's log-probabilities on the test windows, computed once per sweep and shared by
every point (as numpy arrays: in Ray's object store every task on a node reads the same copy)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F


class Reference:
    """Log-probabilities of `model` on `windows`; `score(candidate)` gives perplexity, KL(dense ||
    candidate) and top-1 agreement per scored token."""

    def __init__(self, model: torch.nn.Module, windows: list, device: str = "cpu"):
        """`device`: where the dense model runs for this pass (it goes back to the CPU after); the
        log-probabilities are kept on the CPU."""
        self.windows, self.logps = windows, []
        nll = tokens = 0.0
        model.to(device)
        with torch.inference_mode():
            for window in windows:
                ids = torch.tensor([window.ids], device=device)
                logp = F.log_softmax(model(ids).logits[0, window.first_scored : -1].float(), dim=-1)
                targets = ids[0, window.first_scored + 1 :]
                nll -= float(logp.gather(-1, targets[:, None]).sum())
                tokens += targets.numel()
                self.logps.append(logp.cpu().numpy())
        model.to("cpu")
        self.scores = {"perplexity": math.exp(nll / tokens), "kl": 0.0, "top1_agreement": 1.0}

    @torch.inference_mode()
    def score(self, model: torch.nn.Module, device: str = "cpu") -> dict:
        nll = kl = agree = tokens = 0.0
        for window, ref_np in zip(self.windows, self.logps):
            ids = torch.tensor([window.ids], device=device)
            targets = ids[0, window.first_scored + 1 :]
            with warnings.catch_warnings():  # read-only in Ray's object store: only read here
                warnings.simplefilter("ignore", UserWarning)
                ref = torch.from_numpy(np.asarray(ref_np)).to(device)
            logp = F.log_softmax(model(ids).logits[0, window.first_scored : -1].float(), dim=-1)
            nll -= float(logp.gather(-1, targets[:, None]).sum())
            kl += float(F.kl_div(logp, ref, log_target=True, reduction="sum"))
            agree += float((logp.argmax(-1) == ref.argmax(-1)).sum())
            tokens += targets.numel()
        return {"perplexity": math.exp(nll / tokens), "kl": kl / tokens, "top1_agreement": agree / tokens}
