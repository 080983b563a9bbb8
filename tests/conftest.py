import sys
from pathlib import Path

# the YOLOv8 reference used by the detection tests and tools/bench_detection_loss.py lives beside the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))
