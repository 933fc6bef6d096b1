"""Analytic floating-point operation count of HAN's training pass, per clip.

Only matrix products are counted: they are what the machine's matmul rate
(measured by benchmarks/run.py) bounds. A product of an (m, k) and a (k, n)
matrix costs 2mkn FLOPs (a multiply and an add per term).

Forward. A dense layer on m rows, k -> n features, costs 2mkn. One clip has
T = 10 segments, d = 512, FFN width 512, 25 classes:
  - embeddings: fc_a (128 -> d), fc_v (2048 -> d), fc_st (512 -> d) on T rows
    each, fc_fusion (2d -> d) on T rows. fc_v runs on the T segment means of
    the 2D features; the reference runs it on all 8T frames, 8x the cost
    (`frames_2d=80`).
  - the shared hybrid-attention layer runs on two query sequences (audio and
    visual), T rows each. Per sequence and attention block (cross and self):
    four d x d projections (query, key, value, out) on T rows, plus the
    scores q k^T and the weighted sum of values, 2 T T d each. Then linear1
    and linear2, d x d on T rows.
  - heads fc_prob, fc_frame_att, fc_av_att: d -> 25 on the 2T rows of
    x = stack([h_a, h_v]).
  - contrastive logits z_a z_v^T: 2 T T d.
Backward. Each product A B has two gradients, dA = dY B^T and dB = A^T dY,
each as costly as the forward product; a dense layer whose input is the data
(fc_a, fc_v, fc_st) needs only the weight gradient.

Per clip (T = 10, d = 512, 2D features pre-averaged), in FLOPs:

  layer                        forward      backward
  fc_a                       1,310,720     1,310,720
  fc_v                      20,971,520    20,971,520
  fc_st                      5,242,880     5,242,880
  fc_fusion                 10,485,760    20,971,520
  cross_attn projections    41,943,040    83,886,080
  cross_attn scores            409,600       819,200
  self_attn projections     41,943,040    83,886,080
  self_attn scores             409,600       819,200
  linear1                   10,485,760    20,971,520
  linear2                   10,485,760    20,971,520
  heads                      1,536,000     3,072,000
  contrastive logits           102,400       204,800
  total                    145,326,080   263,127,040

Forward and backward: 408,453,120 FLOPs = 0.408 GFLOP per clip. With fc_v on
the 80 frames (PyTorch reference): 0.702 GFLOP per clip.

Not counted: layer norms, softmaxes, sigmoids, dropout masks and the Adam
update (about 12 FLOPs per parameter per step: 55 MFLOP per step of 4.57 M
parameters, 3.4 MFLOP per clip at batch 16, under 1 % of the total).

Run `python benchmarks/flops.py` to print the table for other sizes.
"""

import argparse
import dataclasses


@dataclasses.dataclass(frozen=True)
class Count:
  """FLOPs of one layer's matrix products, per clip."""
  name: str
  forward: int
  backward: int


def dense(name: str, rows: int, fan_in: int, fan_out: int, *, input_grad: bool = True) -> Count:
  """A dense layer on `rows` rows; `input_grad=False` where its input is data."""
  flops = 2 * rows * fan_in * fan_out
  return Count(name, flops, 2 * flops if input_grad else flops)


def hybrid_layer(t: int = 10, d: int = 512, ffn_dim: int = 512,
                 sequences: int = 2) -> list[Count]:
  """The hybrid-attention layer on `sequences` query sequences of t rows.

  The other modality has t rows too. HAN runs it on 2 sequences per clip.
  """
  counts = []
  for block in ('cross_attn', 'self_attn'):
    proj = 4 * dense('', sequences * t, d, d).forward
    counts.append(Count(f'{block} projections', proj, 2 * proj))
    scores = sequences * 2 * (2 * t * t * d)  # q k^T and weights @ v.
    counts.append(Count(f'{block} scores', scores, 2 * scores))
  counts.append(dense('linear1', sequences * t, d, ffn_dim))
  counts.append(dense('linear2', sequences * t, ffn_dim, d))
  return counts


def han(t: int = 10, d: int = 512, ffn_dim: int = 512, num_classes: int = 25,
        audio_dim: int = 128, video_2d_dim: int = 2048, video_3d_dim: int = 512,
        frames_2d: int = 10, contrastive: bool = True) -> list[Count]:
  """Per-layer counts of one clip's forward and backward pass.

  Args:
    frames_2d: rows fc_v runs on: t (segment means, this library) or 8t
      (every frame, the PyTorch reference).
    contrastive: whether the contrastive loss's logits are counted.
  """
  counts = [
      dense('fc_a', t, audio_dim, d, input_grad=False),
      dense('fc_v', frames_2d, video_2d_dim, d, input_grad=False),
      dense('fc_st', t, video_3d_dim, d, input_grad=False),
      dense('fc_fusion', t, 2 * d, d),
      *hybrid_layer(t, d, ffn_dim, sequences=2),
  ]
  head = dense('', 2 * t, d, num_classes)
  counts.append(Count('heads', 3 * head.forward, 3 * head.backward))
  if contrastive:
    logits = 2 * t * t * d
    counts.append(Count('contrastive logits', logits, 2 * logits))
  return counts


def total(counts: list[Count]) -> Count:
  return Count('total', sum(c.forward for c in counts), sum(c.backward for c in counts))


def per_clip(**kwargs) -> int:
  """Forward plus backward FLOPs of one clip; kwargs as `han`."""
  t = total(han(**kwargs))
  return t.forward + t.backward


def format_counts(counts: list[Count]) -> str:
  """The table of the module docstring."""
  lines = [f'  {"layer":<22} {"forward":>13} {"backward":>13}']
  for c in counts + [total(counts)]:
    lines.append(f'  {c.name:<22} {c.forward:>13,} {c.backward:>13,}')
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--frames_2d', type=int, default=10,
                      help='rows of fc_v: 10 (segment means) or 80 (every frame)')
  parser.add_argument('--d_model', type=int, default=512)
  args = parser.parse_args(argv)
  counts = han(d=args.d_model, ffn_dim=args.d_model, frames_2d=args.frames_2d)
  both = total(counts)
  print(format_counts(counts))
  print(f'  forward + backward: {(both.forward + both.backward) / 1e9:.3f} GFLOP per clip')


if __name__ == '__main__':
  main()
