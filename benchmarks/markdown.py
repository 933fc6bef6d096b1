"""Markdown helpers of the benchmark scripts: table rows, sections between markers."""

import os

from avvp_jax import workdir


def row(cells) -> str:
  """One Markdown table row."""
  return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def header(names) -> list[str]:
  """A Markdown table's header and rule; 'visual/error_classes' shows as 'visual error classes'."""
  return [row(n.replace('/', ' ').replace('_', ' ') for n in names), '|---' * len(names) + '|']


def read_section(path: str, markers: tuple[str, str]) -> str:
  """The text between the markers of `path`; '' if the file or the markers are missing."""
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    text = f.read()
  start, end = markers
  if start not in text or end not in text:
    return ''
  return text.split(start, 1)[1].split(end, 1)[0]


def replace_section(path: str, body: str, markers: tuple[str, str], heading: str) -> None:
  """Writes `body` between the markers of `path`, keeping the rest of the file; a file that
  lacks them gets `heading` and the markers appended (and is created if need be). Atomic."""
  start, end = markers
  text = '# Results\n'
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
  if start in text and end in text:
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
  else:
    head, tail = text.rstrip('\n') + f'\n\n{heading}\n\n', '\n'
  workdir.atomic_write(path, f'{head}{start}\n{body}\n{end}{tail}')
