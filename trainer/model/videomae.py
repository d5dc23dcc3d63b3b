"""VideoMAE for organ crops: tube masking (slices are frames; a tubelet spans ``t`` slices), the SAME number of
masked tokens in every sample (ratio 0.9 by default), the shared organ ViT as encoder over visible tokens only, a light
transformer decoder, and the normalised-pixel loss (each target tubelet standardised by its own mean/std) on the
masked tokens.

Tube masking note: the crop is already tokenised in tubelets along z; masking whole tubelets is VideoMAE's
tube masking with tube length = tubelet depth (the temporal redundancy across slices inside one tubelet can not leak).
With the hybrid conv stem (``ViTConfig.stem == "conv"``) the masked tubelets are blanked in the input before the stem,
so no visible token sees masked pixels through its receptive field.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.model.vit3d import Block, OrganEncoder, ViTConfig


def patchify(x: torch.Tensor, tubelet) -> torch.Tensor:
    """[B,1,d,h,w] -> [B, N, t*p*q] in the Conv3d token order (z-major)."""
    b, _, d, h, w = x.shape
    t, p, q = tubelet
    x = x.reshape(b, d // t, t, h // p, p, w // q, q)
    return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, (d // t) * (h // p) * (w // q), t * p * q)


def tube_mask(batch: int, n_tokens: int, ratio: float, generator=None, device=None):
    """-> (ids_keep [B,k], ids_masked [B,N-k]); every sample has exactly round(N*ratio) masked tokens."""
    n_mask = int(round(n_tokens * ratio))
    n_mask = min(max(n_mask, 1), n_tokens - 1)
    noise = torch.rand(batch, n_tokens, generator=generator, device=device)
    ids = torch.argsort(noise, dim=1)
    return ids[:, : n_tokens - n_mask], ids[:, n_tokens - n_mask:]


class VideoMAE(nn.Module):
    def __init__(self, cfg: ViTConfig, mask_ratio: float = 0.9, decoder_dim: int = 64, decoder_depth: int = 1,
                 decoder_heads: int = 4, encoder: OrganEncoder | None = None):
        super().__init__()
        self.cfg, self.mask_ratio = cfg, mask_ratio
        self.encoder = encoder or OrganEncoder(cfg)  # the head is unused here; kept so stage 2 loads one module
        self.enc2dec = nn.Linear(cfg.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.dec_pos = nn.Parameter(torch.zeros(1, cfg.n_tokens, decoder_dim))
        self.dec_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.dec_norm = nn.LayerNorm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, cfg.patch_voxels)
        nn.init.trunc_normal_(self.dec_pos, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, crop: torch.Tensor, organ_index: torch.Tensor, generator=None):
        bb = self.encoder.backbone
        b, n = crop.shape[0], self.cfg.n_tokens
        keep, masked = tube_mask(b, n, self.mask_ratio, generator=generator, device=crop.device)
        inp = crop
        if self.cfg.stem == "conv":
            # overlapping convolutions would carry a masked tubelet's pixels into its visible neighbours' tokens:
            # blank the masked tubelets in the input first (SparK-style masked input for a conv stem)
            visible = torch.zeros(b, n, device=crop.device).scatter(1, keep, 1.0)
            inp = crop * F.interpolate(visible.view(b, 1, *self.cfg.grid), scale_factor=self.cfg.tubelet,
                                       mode="nearest")
        tokens = bb.embed(inp)  # [B,N,D]
        d = tokens.shape[-1]
        vis = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, d))
        enc = bb.encode_tokens(vis, organ_index)[:, 1:]  # drop CLS
        e = self.enc2dec(enc)
        dd = e.shape[-1]
        full = self.mask_token.expand(b, n, dd).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dd), e)
        x = full + self.dec_pos
        for blk in self.dec_blocks:
            x = blk(x)
        pred = self.pred(self.dec_norm(x))  # [B,N,P]
        target = patchify(crop, self.cfg.tubelet)
        mean = target.mean(-1, keepdim=True)
        var = target.var(-1, keepdim=True, unbiased=False)
        target = (target - mean) / (var + 1e-6).sqrt()
        pm = torch.gather(pred, 1, masked.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))
        tm = torch.gather(target, 1, masked.unsqueeze(-1).expand(-1, -1, target.shape[-1]))
        return F.mse_loss(pm, tm)
