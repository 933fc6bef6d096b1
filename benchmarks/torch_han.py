"""HAN, its losses and its training step in PyTorch: the yardstick of benchmarks/run.py.

Written from docs/spec.md sections 2 and 3 the way a PyTorch user writes it, not part of the
library: `nn.MultiheadAttention`, the shared layer called once per modality, `fc_v` on the 2D
features at 8 frames per second (B, 80, 2048) and the mean over each segment's 8 frames after
it, default `torch.optim.Adam`, and a `DataLoader` over per-clip arrays.
`load_flax_params` copies avvp_jax parameters in, so that tests/test_benchmarks.py can check
that both frameworks compute the same function.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FRAMES_PER_SEGMENT = 8


class HybridAttentionLayer(nn.Module):
  """y = LN(q + Drop(MHA(q, o, o)) + Drop(MHA(q, q, q))); h = LN(y + Drop(W2 Drop(ReLU(W1 y))))."""

  def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float):
    super().__init__()
    self.cross_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout,
                                            batch_first=True)
    self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout,
                                           batch_first=True)
    self.linear1 = nn.Linear(d_model, ffn_dim)
    self.linear2 = nn.Linear(ffn_dim, d_model)
    self.norm1 = nn.LayerNorm(d_model)
    self.norm2 = nn.LayerNorm(d_model)
    self.dropout = nn.Dropout(dropout)  # Stateless: one module serves every dropout site.

  def forward(self, q, o):
    """q (B, T, d), o (B, T', d) -> (B, T, d)."""
    cross = self.cross_attn(q, o, o, need_weights=False)[0]
    self_ = self.self_attn(q, q, q, need_weights=False)[0]
    y = self.norm1(q + self.dropout(cross) + self.dropout(self_))
    f = self.linear2(self.dropout(F.relu(self.linear1(y))))
    return self.norm2(y + self.dropout(f))


class HAN(nn.Module):
  """MMIL_Net: embeddings, one shared hybrid-attention layer, MMIL pooling."""

  def __init__(self, d_model: int = 512, num_heads: int = 1, ffn_dim: int = 512,
               dropout: float = 0.1, num_classes: int = 25, audio_dim: int = 128,
               video_2d_dim: int = 2048, video_3d_dim: int = 512):
    super().__init__()
    self.fc_a = nn.Linear(audio_dim, d_model)
    self.fc_v = nn.Linear(video_2d_dim, d_model)
    self.fc_st = nn.Linear(video_3d_dim, d_model)
    self.fc_fusion = nn.Linear(2 * d_model, d_model)
    self.han_layer = HybridAttentionLayer(d_model, num_heads, ffn_dim, dropout)
    self.fc_prob = nn.Linear(d_model, num_classes)
    self.fc_frame_att = nn.Linear(d_model, num_classes)
    self.fc_av_att = nn.Linear(d_model, num_classes)

  def forward(self, audio, video_2d, video_3d) -> dict:
    """audio (B, T, 128), video_2d (B, 8T, 2048) or (B, T, 2048), video_3d (B, T, 512).

    Returns the outputs of avvp_jax.models.HAN: global_prob, a_prob, v_prob (B, C); frame_prob,
    frame_att, av_att (B, T, 2, C); h_a, v (B, T, d).
    """
    batch, t = audio.shape[:2]
    a = self.fc_a(audio)
    v2d = self.fc_v(video_2d)
    if v2d.shape[1] != t:  # Frames: the mean of each segment's 8 frames.
      v2d = v2d.reshape(batch, t, -1, v2d.shape[-1]).mean(2)
    v = self.fc_fusion(torch.cat([v2d, self.fc_st(video_3d)], -1))
    h_a = self.han_layer(a, v)
    h_v = self.han_layer(v, a)
    x = torch.stack([h_a, h_v], 2)  # (B, T, 2, d)
    frame_prob = torch.sigmoid(self.fc_prob(x))
    frame_att = torch.softmax(self.fc_frame_att(x), dim=1)
    av_att = torch.softmax(self.fc_av_att(x), dim=2)
    temporal = frame_att * frame_prob
    return {
        'global_prob': (temporal * av_att).sum((1, 2)),
        'a_prob': temporal[:, :, 0].sum(1),
        'v_prob': temporal[:, :, 1].sum(1),
        'frame_prob': frame_prob,
        'frame_att': frame_att,
        'av_att': av_att,
        'h_a': h_a,
        'v': v,
    }


def mil_loss(out: dict, y, y_a, y_v, clip: float = 1e-7):
  """BCE(global_prob, y) + BCE(a_prob, y_a) + BCE(v_prob, y_v), probabilities clipped."""
  bce = lambda p, target: F.binary_cross_entropy(p.clamp(clip, 1 - clip), target)
  return bce(out['global_prob'], y) + bce(out['a_prob'], y_a) + bce(out['v_prob'], y_v)


def contrastive_loss(h_a, v, tau: float = 0.2, label_smoothing: float = 0.1):
  """Per clip, segment t's logits over the T segments z_a[t] . z_v[t'] / tau; target t' = t
  with (1 - ls) on t and ls / (T - 1) elsewhere (not F.cross_entropy's ls / T smoothing)."""
  logits = F.normalize(h_a, dim=-1) @ F.normalize(v, dim=-1).transpose(1, 2) / tau
  t = logits.shape[-1]
  eye = torch.eye(t, device=logits.device)
  target = (1 - label_smoothing) * eye + label_smoothing / (t - 1) * (1 - eye)
  return F.cross_entropy(logits.reshape(-1, t), target.repeat(logits.shape[0], 1))


def total_loss(out: dict, batch: dict, tau: float = 0.2) -> torch.Tensor:
  """MIL + contrastive (weight 1), the loss of MA's stages 1 and 3."""
  return (mil_loss(out, batch['y_global'], batch['y_a'], batch['y_v'])
          + contrastive_loss(out['h_a'], out['v'], tau))


def make_train_step(model: HAN, lr: float = 3e-4):
  """`step(batch) -> loss`: forward in train mode, backward, one Adam update."""
  optimizer = torch.optim.Adam(model.parameters(), lr=lr)

  def step(batch: dict) -> torch.Tensor:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = total_loss(model(batch['audio'], batch['video_2d'], batch['video_3d']), batch)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


class ClipDataset(torch.utils.data.Dataset):
  """One clip per item, as PyTorch users load LLP: per-clip arrays, 2D features at 80 frames.

  The synthetic features are segment means (T, 2048); each is repeated over its segment's 8
  frames, so that the mean over a segment's frames is the segment feature again.
  """

  def __init__(self, audio, video_2d, video_3d, targets: dict):
    # Writable copies of the targets: PyTorch warns about read-only arrays (made from JAX's).
    targets = {k: np.array(v) for k, v in targets.items()}
    self.clips = [{'audio': audio[i], 'video_2d': video_2d[i], 'video_3d': video_3d[i],
                   **{k: v[i] for k, v in targets.items()}} for i in range(len(audio))]

  def __len__(self) -> int:
    return len(self.clips)

  def __getitem__(self, i: int) -> dict:
    clip = dict(self.clips[i])
    clip['video_2d'] = to_frames(clip['video_2d'], axis=0)
    return clip


def to_frames(video_2d: np.ndarray, axis: int = 1) -> np.ndarray:
  """Segment means (..., T, D) -> frames (..., 8T, D), each segment's feature 8 times."""
  return np.repeat(video_2d, FRAMES_PER_SEGMENT, axis=axis)


def train_epoch(step, loader, device, max_steps: int) -> int:
  """Runs `step` on the loader's batches, at most `max_steps`; returns the steps run."""
  steps = 0
  for batch in loader:
    if steps == max_steps:
      break
    step({k: x.to(device, non_blocking=True) for k, x in batch.items()})
    steps += 1
  return steps


def _dense(flax_dense: dict, prefix: str) -> dict:
  return {f'{prefix}.weight': np.asarray(flax_dense['kernel']).T,
          f'{prefix}.bias': np.asarray(flax_dense['bias'])}


def _attention(flax_mha: dict, prefix: str) -> dict:
  # nn.MultiheadAttention packs the q, k, v projections into one (3d, d) weight; its heads
  # are contiguous d_head slices, as in the Flax module.
  names = ('query', 'key', 'value')
  return {f'{prefix}.in_proj_weight': np.concatenate(
              [np.asarray(flax_mha[n]['kernel']).T for n in names]),
          f'{prefix}.in_proj_bias': np.concatenate([np.asarray(flax_mha[n]['bias'])
                                                    for n in names]),
          **_dense(flax_mha['out'], f'{prefix}.out_proj')}


DENSE = ('fc_a', 'fc_v', 'fc_st', 'fc_fusion', 'fc_prob', 'fc_frame_att', 'fc_av_att')


def _layer_state(layer: dict) -> dict:
  """HybridAttentionLayer parameters, keys relative to the layer."""
  state = {}
  for name in ('cross_attn', 'self_attn'):
    state.update(_attention(layer[name], name))
  for name in ('linear1', 'linear2'):
    state.update(_dense(layer[name], name))
  for name in ('norm1', 'norm2'):
    state[f'{name}.weight'] = np.asarray(layer[name]['scale'])
    state[f'{name}.bias'] = np.asarray(layer[name]['bias'])
  return state


def state_dict_from_flax(params) -> dict[str, torch.Tensor]:
  """The state dict of `HAN` (or of `HybridAttentionLayer`) holding avvp_jax parameters."""
  if 'han_layer' in params:
    state = {f'han_layer.{k}': v for k, v in _layer_state(params['han_layer']).items()}
    for name in DENSE:
      state.update(_dense(params[name], name))
  else:
    state = _layer_state(params)
  return {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}


def load_flax_params(module: nn.Module, params) -> nn.Module:
  """Copies avvp_jax parameters of HAN or HybridAttentionLayer into the matching module.

  Strict: every tensor of `module` must be set. Returns the module.
  """
  module.load_state_dict(state_dict_from_flax(params), strict=True)
  return module
