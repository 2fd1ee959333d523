from .meta_arch import UnsupEmbeddingHead, UnsupervisedReID
