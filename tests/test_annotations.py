"""The LLP annotation parsers, on the real release files and on small malformed ones."""

from pathlib import Path
import re

import numpy as np
import pytest

from avvp_jax.data import annotations
from avvp_jax.data.classes import CLASS_INDEX, NUM_CLASSES, NUM_SEGMENTS

LLP_DIR = Path(__file__).resolve().parents[2] / 'shared' / 'llp'
real = pytest.mark.skipif(not LLP_DIR.is_dir(),
                          reason=f'the real LLP annotation files are not in {LLP_DIR}')

# Dense truth written by hand from the rows of the real files: class -> covered segments.
EXPECTED = {
    # Id with '_'; several Speech rows (AVVP_eval_audio.csv lines 3387-3391,
    # AVVP_eval_visual.csv lines 2080-2083).
    'L_NiIDd9qQQ_110_120': {
        'audio': {'Dog': '1000000000', 'Speech': '1011011001'},
        'visual': {'Dog': '1111111111', 'Speech': '1011011000'},
    },
    # Id starting with '-'; Speech audible only (audio lines 2736-2738, visual line 1672).
    '-9D8GR2VBKE_40_50': {
        'audio': {'Frying_(food)': '1111111111', 'Speech': '1101000000'},
        'visual': {'Frying_(food)': '0000000001'},
    },
    # Five Clapping rows (audio lines 3427-3435, visual lines 2101-2109).
    'GKZvKWwrDcE_30_40': {
        'audio': {'Clapping': '1010100101', 'Speech': '1010110111'},
        'visual': {'Clapping': '1010100101', 'Speech': '1010110111'},
    },
    # A degenerate row 'Cheering 9 0' (audio line 3770) marks nothing.
    '8DF2PxdT5tE_390_400': {
        'audio': {'Basketball_bounce': '0011111100', 'Speech': '1100000111'},
        'visual': {'Basketball_bounce': '0011111100', 'Speech': '0000000101'},
    },
}


def _matrix(rows: dict[str, str]) -> np.ndarray:
  """{class: '0101...'} -> bool (25, 10)."""
  m = np.zeros((NUM_CLASSES, NUM_SEGMENTS), bool)
  for name, segments in rows.items():
    m[CLASS_INDEX[name]] = [s == '1' for s in segments]
  return m


@pytest.fixture(scope='module')
def eval_names():
  return (annotations.read_weak_labels(str(LLP_DIR / 'AVVP_val_pd.csv'))[0]
          + annotations.read_weak_labels(str(LLP_DIR / 'AVVP_test_pd.csv'))[0])


@real
@pytest.mark.parametrize('name, count', [
    ('AVVP_train.csv', 10_000), ('AVVP_val_pd.csv', 649), ('AVVP_test_pd.csv', 1_200),
    ('AVVP_dataset_full.csv', 11_849)])
def test_real_split_sizes(name, count):
  names, labels = annotations.read_weak_labels(str(LLP_DIR / name))
  assert len(names) == len(set(names)) == count
  assert labels.shape == (count, NUM_CLASSES) and labels.dtype == np.float32
  assert (labels.sum(1) >= 1).all()


@real
def test_real_weak_labels_of_odd_ids():
  names, labels = annotations.read_weak_labels(str(LLP_DIR / 'AVVP_val_pd.csv'))
  row = labels[names.index('-9D8GR2VBKE_40_50')]
  assert np.flatnonzero(row).tolist() == [CLASS_INDEX['Speech'], CLASS_INDEX['Frying_(food)']]
  assert annotations.video_id('-9D8GR2VBKE_40_50') == '-9D8GR2VBKE'
  assert annotations.video_id('L_NiIDd9qQQ_110_120') == 'L_NiIDd9qQQ'
  assert annotations.video_id('FLYjmRy39_g_10_20') == 'FLYjmRy39_g'


@real
@pytest.mark.parametrize('modality, file', [
    ('audio', 'AVVP_eval_audio.csv'), ('visual', 'AVVP_eval_visual.csv')])
def test_real_dense_truth_by_hand(eval_names, modality, file):
  truth, _ = annotations.dense_truth(annotations.read_event_rows(str(LLP_DIR / file)),
                                     eval_names)
  for clip, expected in EXPECTED.items():
    np.testing.assert_array_equal(truth[eval_names.index(clip)], _matrix(expected[modality]),
                                  err_msg=f'{clip} {modality}')


@real
def test_real_degenerate_rows(eval_names):
  audio = annotations.read_event_rows(str(LLP_DIR / 'AVVP_eval_audio.csv'))
  visual = annotations.read_event_rows(str(LLP_DIR / 'AVVP_eval_visual.csv'))
  assert (len(audio), len(visual)) == (4131, 2495)
  # Six rows with offset <= onset, all in the audio file; one of them ('CSWQ_HzQ_10_20')
  # names a clip that is in no split, so it counts among the unknown-clip rows.
  degenerate = [r.clip for r in audio + visual if r.offset <= r.onset]
  assert degenerate == ['CaC2xvdLC34_250_260', 'CSWQ_HzQ_10_20', 'Gg3pK71kApY_30_40',
                        'H5WcJwyjxIg_2_12', 'Baue01N86wE_10_20', '8DF2PxdT5tE_390_400']
  _, stats_a = annotations.dense_truth(audio, eval_names)
  _, stats_v = annotations.dense_truth(visual, eval_names)
  assert (len(stats_a.empty_rows), len(stats_v.empty_rows)) == (5, 0)
  assert (len(stats_a.unknown_clip_rows), len(stats_v.unknown_clip_rows)) == (14, 11)
  unknown = {r.clip for r in stats_a.unknown_clip_rows + stats_v.unknown_clip_rows}
  assert {'AkAfFL5Q4QA_30_40', '19jWnmYnlD8_30_400', 'CSWQ_HzQ_10_20'} <= unknown
  assert annotations.describe_rows(stats_a.empty_rows, 2) == (
      'CaC2xvdLC34_250_260 (line 48), Gg3pK71kApY_30_40 (line 100), ... (3 more)')


# Small malformed files.
WEAK_HEADER = 'filename\tevent_labels\n'
DENSE_HEADER = 'filename\tonset\toffset\tevent_labels\n'


def _write(tmp_path, text: str) -> Path:
  path = tmp_path / 'AVVP_x.csv'
  path.write_text(text)
  return path


def _names_file_and_clip(path: Path, clip: str) -> str:
  return f'{re.escape(str(path))}.*{re.escape(repr(clip))}'


@pytest.mark.parametrize('body, clip, what', [
    ('-abcdefghij_0_10\tSpeech,Dragon\n', '-abcdefghij_0_10', "unknown class 'Dragon'"),
    ('ab_cdefghij_0_10\tSpeech\nab_cdefghij_0_10\tDog\n', 'ab_cdefghij_0_10', 'listed twice'),
    ('ab_cdefghij_0_10\tSpeech\nab_cdefghij_20_30\tDog\n', 'ab_cdefghij_20_30',
     'same video id'),
    ('ab_cdefghij_0_10\t\n', 'ab_cdefghij_0_10', 'no event label'),
    ('ab_cdefghij_0_10\tSpeech\t3\n', 'ab_cdefghij_0_10', '3 fields'),
])
def test_bad_weak_labels(tmp_path, body, clip, what):
  path = _write(tmp_path, WEAK_HEADER + 'abcdefghijk_0_10\tDog\n' + body)
  with pytest.raises(annotations.AnnotationError,
                     match=_names_file_and_clip(path, clip) + '.*' + re.escape(what)):
    annotations.read_weak_labels(str(path))


@pytest.mark.parametrize('body, clip, what', [
    ('-abcdefghij_0_10\t0\t4\tDragon\n', '-abcdefghij_0_10', "unknown class 'Dragon'"),
    ('-abcdefghij_0_10\t0.5\t4\tDog\n', '-abcdefghij_0_10', 'not integer seconds'),
    ('-abcdefghij_0_10\t-1\t4\tDog\n', '-abcdefghij_0_10', 'onset -1 is outside 0..10'),
    ('ab_cdefghij_0_10\t2\t11\tDog\n', 'ab_cdefghij_0_10', 'offset 11 is outside 0..10'),
])
def test_bad_dense_rows(tmp_path, body, clip, what):
  path = _write(tmp_path, DENSE_HEADER + 'abcdefghijk_0_10\t0\t10\tDog\n' + body)
  with pytest.raises(annotations.AnnotationError,
                     match=_names_file_and_clip(path, clip) + '.*' + re.escape(what)):
    annotations.read_event_rows(str(path))


@pytest.mark.parametrize('reader, header', [
    (annotations.read_weak_labels, 'filename\tlabels\n'),
    (annotations.read_event_rows, 'filename\tstart\toffset\tevent_labels\n'),
])
def test_wrong_header(tmp_path, reader, header):
  path = _write(tmp_path, header + 'abcdefghijk_0_10\t0\t10\tDog\n')
  with pytest.raises(annotations.AnnotationError, match=re.escape(f'{path}:1: header is')):
    reader(str(path))


def test_dense_truth_on_a_small_file(tmp_path):
  path = _write(tmp_path, DENSE_HEADER + ''.join([
      'ab_cdefghij_0_10\t0\t2\tDog\n',
      'ab_cdefghij_0_10\t5\t10\tDog\n',  # A second run of the same class.
      'ab_cdefghij_0_10\t4\t4\tSpeech\n',  # Marks nothing.
      'zzzzzzzzzzz_0_10\t0\t10\tDog\n',  # A clip not asked for.
  ]))
  rows = annotations.read_event_rows(str(path))
  truth, stats = annotations.dense_truth(rows, ['ab_cdefghij_0_10'])
  np.testing.assert_array_equal(truth[0], _matrix({'Dog': '1100011111'}))
  assert [r.lineno for r in stats.empty_rows] == [4]
  assert [r.lineno for r in stats.unknown_clip_rows] == [5]
