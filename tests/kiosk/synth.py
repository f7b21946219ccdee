"""Re-export of :mod:`hil.synthetic_face` (moved there for the simulated service hall), so that
``import synth`` keeps working in the face-capture tests: the same module object, private
names included."""

import sys

from hil import synthetic_face

sys.modules[__name__] = synthetic_face
