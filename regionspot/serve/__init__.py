"""`regionspot-serve`: the predictor behind HTTP, with an LRU of image embeddings (`regionspot.serve.app`)."""
