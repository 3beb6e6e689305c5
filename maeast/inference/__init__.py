"""Embeddings from exported encoders: `maeast.load_encoder(path)` in Python, `maeast embed` on files.

    encoder (AudioEncoder, load_encoder: waveforms or fbanks -> clip and token embeddings)
    -> files (embed_files, save_embeddings, read_embeddings: audio files -> .npy / .safetensors)
"""

from maeast.inference.encoder import AudioEncoder, Embeddings, load_encoder
from maeast.inference.files import FileEmbeddings, embed_files, read_embeddings, save_embeddings

__all__ = ["AudioEncoder", "Embeddings", "load_encoder", "FileEmbeddings", "embed_files", "save_embeddings",
           "read_embeddings"]
