"""Which library trains probekit's SAEs: quality per training minute on an organism's activations.

Trains TopK and ReLU/L1 ("standard") SAEs on the same rows with every implementation importable in
the running venv, each for 1, 2, 4 and 8 epochs, one thread, and appends one JSON line per run
(seconds, held-out FVU, L0, dead latents) to ``--out``:

- ``probekit``: :func:`probekit.sae.train_sae` (streams an ActivationStore);
- ``sparsify``: eai-sparsify's ``SparseCoder`` with the loss and optimizer its ``Trainer`` uses
  (FVU + AuxK, SignSGD under ScheduleFree, its learning-rate rule, decoder renormalised each step);
  its ``Trainer`` itself runs a Hugging Face model over token datasets and cannot read stored activations;
- ``sae-lens``: ``SAETrainer`` with a ``data_provider`` iterator over the same batches (its own Adam,
  gradient clipping, dead-latent window and L1 schedule).

The rows are centred and scaled once (``E||x||^2 = d_in``) and every library gets the same batches in
the same order (FVU is unchanged by that transform). Run it once per venv (sparsify and sae-lens
cannot share probekit's: see docs/results.md, "SAE library"):

    python benchmarks/sae_libraries.py --acts acts.safetensors --out runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from safetensors.torch import load_file

D_SAE, K, BATCH, SEED = 512, 16, 256, 0


def batches(x: torch.Tensor, epochs: int):
    g = torch.Generator().manual_seed(SEED + 1)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for b in range(0, x.shape[0] - BATCH + 1, BATCH):
            yield x[perm[b:b + BATCH]]


@torch.no_grad()
def quality(encode, decode, x: torch.Tensor) -> dict:
    z = encode(x)
    err = (x - decode(z)).pow(2).sum()
    return {"fvu": float(err / (x - x.mean(0)).pow(2).sum()), "l0": float((z > 0).sum(-1).float().mean()),
            "dead": int(((z > 0).sum(0) == 0).sum())}


def run_probekit(x, arch, epochs):
    from probekit.hooks.store import ActivationStore
    from probekit.sae import train_sae

    sae = train_sae(ActivationStore({"p": x}), "p", architecture=arch, d_sae=D_SAE, k=K, epochs=epochs,
                    batch_size=BATCH, seed=SEED, l1=1.0)
    return sae.encode, sae.decode


def run_sparsify(x, arch, epochs):
    if arch != "topk":
        return None
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    torch.manual_seed(SEED)
    sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=D_SAE, k=K))
    sae.b_dec.data = x.mean(0)
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": 5e-3 / (D_SAE / 2 ** 14) ** 0.5}]),
                              momentum=0.95)
    opt.train()
    since = torch.zeros(D_SAE, dtype=torch.long)
    for xb in batches(x, epochs):
        sae.set_decoder_norm_to_unit_norm()
        out = sae(xb, dead_mask=since > x.shape[0])
        loss = out.fvu + (1 / 32) * out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        fired = torch.zeros(D_SAE, dtype=torch.bool)
        fired[out.latent_indices.flatten()] = True
        since = torch.where(fired, 0, since + xb.shape[0])
    opt.eval()
    sae.set_decoder_norm_to_unit_norm()

    def enc(v):
        e = sae.encode(v)
        return torch.zeros(v.shape[0], D_SAE).scatter(-1, e.top_indices, e.top_acts)

    return enc, lambda z: z @ sae.W_dec + sae.b_dec


def run_saelens(x, arch, epochs):
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(SEED)
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=D_SAE, k=K))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=x.shape[1], d_sae=D_SAE, l1_coefficient=1.0,
                                                            l1_warm_up_steps=0))
    n = (x.shape[0] // BATCH) * BATCH * epochs
    cfg = SAETrainerConfig(total_training_samples=n, train_batch_size_samples=BATCH, lr=3e-4, lr_end=3e-4,
                           dead_feature_window=max(1, x.shape[0] // BATCH))
    SAETrainer(cfg, sae, data_provider=batches(x, epochs)).fit()
    sae.eval()
    return sae.encode, sae.decode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--acts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", default="1,2,4,8")
    ap.add_argument("--libraries", default="probekit,sparsify,sae-lens")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t = load_file(a.acts)
    mean, x = t["train"].mean(0), t["train"]
    scale = math.sqrt(x.shape[1] / float((x - mean).pow(2).sum(-1).mean()))
    prep = lambda v: (v - mean) * scale  # noqa: E731
    x, ev, ev_last = prep(x), prep(t["eval"]), prep(t["eval_last"])
    runners = {"probekit": run_probekit, "sparsify": run_sparsify, "sae-lens": run_saelens}
    for lib in a.libraries.split(","):
        for arch in ("topk", "standard"):
            for epochs in (int(e) for e in a.epochs.split(",")):
                try:
                    t0 = time.perf_counter()
                    got = runners[lib](x, arch, epochs)
                    if got is None:
                        continue
                    secs = time.perf_counter() - t0
                except ImportError as exc:
                    print(lib, "not importable here:", exc)
                    break
                row = {"library": lib, "architecture": arch, "epochs": epochs, "rows": x.shape[0], "seconds": secs,
                       **quality(*got, ev), **{f"last_{k}": v for k, v in quality(*got, ev_last).items()}}
                print(json.dumps(row), flush=True)
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
