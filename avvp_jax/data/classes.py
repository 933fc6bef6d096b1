"""The 25 LLP event classes, in the fixed order used for labels, outputs and reports."""

CLASSES = (
    'Speech', 'Car', 'Cheering', 'Dog', 'Cat', 'Frying_(food)', 'Basketball_bounce',
    'Fire_alarm', 'Chainsaw', 'Cello', 'Banjo', 'Singing', 'Chicken_rooster',
    'Violin_fiddle', 'Vacuum_cleaner', 'Baby_laughter', 'Accordion', 'Lawn_mower',
    'Motorcycle', 'Helicopter', 'Acoustic_guitar', 'Telephone_bell_ringing',
    'Baby_cry_infant_cry', 'Blender', 'Clapping',
)
NUM_CLASSES = len(CLASSES)
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}

NUM_SEGMENTS = 10  # 1-second segments per 10-second clip.
FRAMES_PER_SEGMENT = 8  # ResNet-152 features are extracted at 8 frames per second.
AUDIO_DIM = 128  # VGGish.
VIDEO_2D_DIM = 2048  # ResNet-152.
VIDEO_3D_DIM = 512  # R(2+1)D-18.
