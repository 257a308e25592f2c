"""The gallery and the demo's search side run without torch (runtime dependencies only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CODE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'onnx', 'mobile_export'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from web_helpers import ColourBundle, COLOURS, write_colour_photo, run_server
from edge_xmr import Library
from edge_xmr.server import Gallery
from edge_xmr import demo
import edge_xmr.cli.demo
tmp = Path(sys.argv[2])
for name, rgb in COLOURS.items():
    write_colour_photo(tmp / 'p' / f'{name}.jpg', rgb)
b = ColourBundle()
with Library.open(tmp / 'i.db', b) as lib:
    lib.index(tmp / 'p')
    assert demo.timed_search(lib, 'green', k=1).hits[0].path.endswith('green.jpg')
g = Gallery(db=tmp / 'i.db', bundle=b, thumbs=tmp / 't')
assert g.search({'q': 'blue'})['results'][0]['name'] == 'blue.jpg'
assert g.image(1, 'thumb')[:2] == b'\\xff\\xd8'
print('torch' in sys.modules)
"""


def test_gallery_and_demo_search_without_torch(tmp_path):
    p = subprocess.run([sys.executable, "-c", CODE, str(Path(__file__).parent), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
