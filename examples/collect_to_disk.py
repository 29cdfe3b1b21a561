"""Record the residual stream of a VLM to a resumable disk store and read it back.

    python examples/collect_to_disk.py [--model PATH] [--out DIR] [--n 64]

Without --model a tiny offline LLaVA is built first (real checkpoints work the same way:
--model llava-hf/llava-1.5-7b-hf).
"""

import argparse
import tempfile

import probekit


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args(argv)
    model_path = args.model or probekit.tiny.build("llava", tempfile.mkdtemp() + "/tiny-llava")
    model = probekit.load(model_path)
    images = probekit.tiny.fixture_images(args.n, 32)
    out = args.out or tempfile.mkdtemp() + "/acts"
    store = probekit.collect(model, images, "What is in the picture?", points=["projector", "lm.*.resid"],
                             positions=("last", "image_mean"), store=out, batch_size=16, shard_size=32)
    again = probekit.ActivationStore.open(out)  # memory-mapped safetensors shards + index.json
    x = again["lm.1.resid"]
    print(f"{again}\nlm.1.resid {tuple(x.shape)} positions {again.positions('lm.1.resid')}")
    return store


if __name__ == "__main__":
    main()
