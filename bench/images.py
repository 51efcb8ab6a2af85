"""Images throughput: images/s tokenized (encode), reconstructed (decode at K), and generated
(AR sampling of K tokens with classifier-free guidance, then decoding).

With --tokenizer / --model (checkpoints of recipes/images/flextok.yaml) it times the trained
models; without, freshly initialised ones of the same shape (throughput does not depend
on the weights; say which when quoting). Prints one JSON object as its last line.

    python bench/images.py --tokenizer runs/images_flextok/tokenizer/checkpoints/last.ckpt \
        --model runs/images_flextok/ar/checkpoints/last.ckpt --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import environment  # noqa: E402
from domains.images.generate import decode_codes, sample_codes  # noqa: E402
from domains.images.tokenizer import ImageTokenizer  # noqa: E402
from seqmodels.checkpoint import load_module  # noqa: E402
from seqmodels.tokenizer import code_vocab  # noqa: E402
from seqmodels.training import SeqLM  # noqa: E402


def _models(args):
    if args.tokenizer:
        tok = load_module(args.tokenizer)
    else:
        tok = ImageTokenizer(
            image_size=28,
            patch_size=7,
            n_tokens=16,
            levels=(8, 5, 5, 5),
            d_model=96,
            encoder_layers=2,
            decoder_layers=2,
            decoder=args.decoder,
        ).eval()
    if args.model:
        lm = load_module(args.model)
    else:
        lm = SeqLM(
            vocab_size=len(code_vocab(tok.codebook_size)),
            d_cond=10,
            d_model=128,
            n_layers=3,
            max_len=tok.n_tokens + 2,
            cond_dropout=0.1,
        ).eval()
    return tok, lm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--decoder", default="mse", choices=["mse", "flow"], help="untrained only")
    p.add_argument("--n", type=int, default=1000, help="images to tokenize")
    p.add_argument("--n-generate", type=int, default=200)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok, lm = _models(args)
    size, c = tok.hparams.image_size, tok.hparams.channels
    x = torch.rand(args.n, c, size, size)

    t = time.perf_counter()
    with torch.no_grad():
        ids = torch.cat(
            [tok.encode({"image": x[s : s + args.batch]}) for s in range(0, args.n, args.batch)]
        )
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    decode_codes(tok, ids, args.batch)
    t_dec = time.perf_counter() - t

    classes = [i % 10 for i in range(args.n_generate)]
    t = time.perf_counter()
    codes = sample_codes(
        lm, classes, 10, tok.n_tokens, args.guidance, progress=False, batch_size=100
    )
    t_sample = time.perf_counter() - t
    t = time.perf_counter()
    decode_codes(tok, codes, args.batch)
    t_gen_dec = time.perf_counter() - t

    result = {
        "weights": "trained" if args.tokenizer else "untrained (same shapes)",
        "decoder": tok.hparams.decoder,
        "tokens_per_image": tok.n_tokens,
        "encode_images_per_s": args.n / t_enc,
        "decode_images_per_s": args.n / t_dec,
        "generate_images_per_s": args.n_generate / (t_sample + t_gen_dec),
        "generate_sampling_share": t_sample / (t_sample + t_gen_dec),
        "guidance": args.guidance,
        **environment("cpu"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
