"""Training from the command line: `autoenc-fast train {ae,vae,context-encoder,gaugan}`.

data.py        embedded default data sets and image folders (bad files: a clear error or a counted skip)
checkpoint.py  atomic checkpoints: weights in safetensors, the rest through torch.load(weights_only=True)
extras.py      the [train] extra's packages a run needs, checked before it starts
families.py    per-family model, losses and pictures
loop.py        the loop: progress bar, metrics.jsonl, PNGs, resume, NaN stop, DistributedDataParallel
"""
