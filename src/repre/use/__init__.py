"""Using what was learned: the evaluated encoder (the one k-NN and export use) applied to a dataset.

    repre.use.embed.embed(checkpoint, "emb.npy")                # emb.npy [N, D], emb.csv (index), emb.json (card)
    repre.use.neighbors.neighbors(checkpoint, "emb.npy", "nn.png")  # queries and their nearest images

Both are also `repre.embed` and `repre.neighbors`.
"""
