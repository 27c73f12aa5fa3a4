"""Using what was learned: the evaluated encoder (the one k-NN and export use) applied to a dataset, and
pictures of what it learned.

    repre.use.embed.embed(checkpoint, "emb.npy")                # emb.npy [N, D], emb.csv (index), emb.json (card)
    repre.use.neighbors.neighbors(checkpoint, "emb.npy", "nn.png")  # queries and their nearest images
    repre.use.show.show(checkpoint, "show.png", compare=baseline)  # attention, patch PCA, reconstruction

embed and neighbors are also `repre.embed` and `repre.neighbors`.
"""
