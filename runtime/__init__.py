"""The lean inference runtime: chunk scheduler, backends, decoding. Never imports torch at import time (DESIGN §1, §4)."""
