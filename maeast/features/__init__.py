"""Features: Kaldi-compatible log-mel fbank in torch, its presets, and corpus statistics.

    from maeast.features import fbank, featurize, get_config
    feats = fbank(waveform)                    # [N] -> [T, 128], [B, N] -> [B, T, 128]
    feats, mask = featurize(wave, lengths, "mae_ast", 16000)  # zero-padded [B, N], real lengths [B]: + padding mask
    feats, _ = featurize(wave, lengths, "ssast_esc50", 16000)  # SSAST's input: every clip [512, 128], no mask
    cfg = get_config("mae_ast")                # cfg.n_mels, cfg.hop_length(), cfg.num_frames(n)
"""

from maeast.features.config import AUDIOSET_MEAN, AUDIOSET_STD, PRESETS, FbankConfig, get_config, num_frames
from maeast.features.fbank import fbank, featurize, fit_frames

__all__ = ["fbank", "featurize", "fit_frames", "FbankConfig", "PRESETS", "get_config", "num_frames", "AUDIOSET_MEAN",
           "AUDIOSET_STD"]
