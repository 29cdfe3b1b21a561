"""Read every layer through the unembedding: top tokens and the rank of a private string.

    python examples/logit_lens.py [--target alice_0000123]
"""

import argparse
import tempfile

import probekit
from probekit.readout.lens import LogitLens


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="alice_0000123")
    args = ap.parse_args(argv)
    model = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
    store = probekit.collect(model, probekit.tiny.fixture_images(16, 32), "What is the username?",
                             points="lm.*.resid", positions=("last", "image_mean"), progress=False)
    lens = LogitLens(model)
    top = lens.top_k(store, k=3)
    ranks = lens.target_ranks(store, [args.target])
    print(top[top["rank"] == 1][["point", "position", "token", "prob"]].to_string(index=False))
    print(ranks.groupby(["point", "position"]).rank_median.min().to_string())
    return top, ranks


if __name__ == "__main__":
    main()
