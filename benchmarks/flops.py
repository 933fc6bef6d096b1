"""Analytic floating-point operation count of HAN's training pass, per clip.

Only matrix products are counted: they are what the machine's matmul rate
(measured by benchmarks/timing.py) bounds. A product of an (m, k) and a (k, n)
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

`products(clips)` lists every product with its shape; benchmarks/timing.py
(products_probe) times exactly those products alone, on random operands, as the time
of a train step whose every other operation were free. Run `python
benchmarks/flops.py` to print the table for other sizes.
"""

import argparse
import collections
import dataclasses


@dataclasses.dataclass(frozen=True)
class Product:
  """`batch` independent products of an (m, k) and a (k, n) matrix, in layer `layer`."""
  layer: str
  backward: bool
  batch: int
  m: int
  k: int
  n: int

  @property
  def flops(self) -> int:
    return 2 * self.batch * self.m * self.k * self.n


@dataclasses.dataclass(frozen=True)
class Count:
  """FLOPs of one layer's matrix products, per clip."""
  name: str
  forward: int
  backward: int


def matmul(layer: str, batch: int, m: int, k: int, n: int, *,
           grads: tuple[str, ...] = ('a', 'b')) -> list[Product]:
  """Y = A B of (m, k) and (k, n) matrices, `batch` times, and the gradients in `grads`:
  dA = dY B^T (m, n, k) and dB = A^T dY (k, m, n), each as costly as the product."""
  products = [Product(layer, False, batch, m, k, n)]
  if 'a' in grads:
    products.append(Product(layer, True, batch, m, n, k))
  if 'b' in grads:
    products.append(Product(layer, True, batch, k, m, n))
  return products


def dense(layer: str, rows: int, fan_in: int, fan_out: int, *,
          input_grad: bool = True) -> list[Product]:
  """A dense layer on `rows` rows; `input_grad=False` where its input is data."""
  return matmul(layer, 1, rows, fan_in, fan_out, grads=('a', 'b') if input_grad else ('b',))


def layer_products(t: int = 10, d: int = 512, ffn_dim: int = 512,
                   sequences: int = 2) -> list[Product]:
  """The hybrid-attention layer on `sequences` query sequences of t rows.

  The other modality has t rows too; HAN runs the layer on 2 sequences per clip. The heads
  split d, so their number does not change the count (it is written for one head).
  """
  products = []
  for block in ('cross_attn', 'self_attn'):
    for _ in range(4):  # query, key, value, out.
      products += dense(f'{block} projections', sequences * t, d, d)
    products += matmul(f'{block} scores', sequences, t, d, t)  # q k^T.
    products += matmul(f'{block} scores', sequences, t, t, d)  # weights @ v.
  products += dense('linear1', sequences * t, d, ffn_dim)
  products += dense('linear2', sequences * t, ffn_dim, d)
  return products


def products(clips: int = 1, t: int = 10, d: int = 512, ffn_dim: int = 512,
             num_classes: int = 25, audio_dim: int = 128, video_2d_dim: int = 2048,
             video_3d_dim: int = 512, frames_2d: int = 10,
             contrastive: bool = True) -> list[Product]:
  """Every matrix product of the forward and backward pass of a batch of `clips` clips.

  Args:
    frames_2d: rows fc_v runs on per clip: t (segment means, this library) or 8t (every
      frame, the PyTorch reference).
    contrastive: whether the contrastive loss's logits are counted.
  """
  rows = clips * t
  out = [*dense('fc_a', rows, audio_dim, d, input_grad=False),
         *dense('fc_v', clips * frames_2d, video_2d_dim, d, input_grad=False),
         *dense('fc_st', rows, video_3d_dim, d, input_grad=False),
         *dense('fc_fusion', rows, 2 * d, d),
         *layer_products(t, d, ffn_dim, sequences=2 * clips)]
  for _ in range(3):  # fc_prob, fc_frame_att, fc_av_att on the 2T rows of stack([h_a, h_v]).
    out += dense('heads', 2 * rows, d, num_classes)
  if contrastive:
    out += matmul('contrastive logits', clips, t, d, t)
  return out


def counts(products_: list[Product]) -> list[Count]:
  """Forward and backward FLOPs per layer, in the order the layers first appear."""
  forward, backward = collections.Counter(), collections.Counter()
  for p in products_:
    (backward if p.backward else forward)[p.layer] += p.flops
  layers = dict.fromkeys(p.layer for p in products_)
  return [Count(name, forward[name], backward[name]) for name in layers]


def hybrid_layer(t: int = 10, d: int = 512, ffn_dim: int = 512,
                 sequences: int = 2) -> list[Count]:
  """Per-layer counts of `layer_products`."""
  return counts(layer_products(t, d, ffn_dim, sequences))


def han(**kwargs) -> list[Count]:
  """Per-layer counts of one clip's forward and backward pass; kwargs as `products`."""
  return counts(products(clips=1, **kwargs))


def total(counts_: list[Count]) -> Count:
  return Count('total', sum(c.forward for c in counts_), sum(c.backward for c in counts_))


def per_clip(**kwargs) -> int:
  """Forward plus backward FLOPs of one clip; kwargs as `products`."""
  return sum(p.flops for p in products(clips=1, **kwargs))


def format_counts(counts_: list[Count]) -> str:
  """The table of the module docstring."""
  lines = [f'  {"layer":<22} {"forward":>13} {"backward":>13}']
  for c in counts_ + [total(counts_)]:
    lines.append(f'  {c.name:<22} {c.forward:>13,} {c.backward:>13,}')
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--frames_2d', type=int, default=10,
                      help='rows of fc_v: 10 (segment means) or 80 (every frame)')
  parser.add_argument('--d_model', type=int, default=512)
  args = parser.parse_args(argv)
  per_layer = han(d=args.d_model, ffn_dim=args.d_model, frames_2d=args.frames_2d)
  both = total(per_layer)
  print(format_counts(per_layer))
  print(f'  forward + backward: {(both.forward + both.backward) / 1e9:.3f} GFLOP per clip')


if __name__ == '__main__':
  main()
