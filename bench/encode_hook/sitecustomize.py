"""bench/cycle_cost.py's counter: with RAGLOOP_COUNT_ENCODES set, every SentenceTransformer.encode call in this
process (and in the training child, which inherits the variable) appends one JSON line to that file: the stage
(RAGLOOP_STAGE), how many of its texts are corpus chunks (by sha256, from RAGLOOP_CORPUS_HASHES), and its seconds.
encode_query / encode_document go through encode, so they are counted too. Without the variable: nothing."""

import os

if os.environ.get("RAGLOOP_COUNT_ENCODES"):
    import hashlib
    import json
    import time

    from sentence_transformers import SentenceTransformer

    _encode = SentenceTransformer.encode
    _corpus: set[str] = set()

    def _counted(self, inputs=None, *args, **kwargs):
        if not _corpus:
            with open(os.environ["RAGLOOP_CORPUS_HASHES"]) as fh:
                _corpus.update(fh.read().split())
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        t = time.monotonic()
        out = _encode(self, inputs, *args, **kwargs)
        chunks = sum(1 for x in texts if isinstance(x, str) and hashlib.sha256(x.encode()).hexdigest() in _corpus)
        with open(os.environ["RAGLOOP_COUNT_ENCODES"], "a") as fh:
            fh.write(json.dumps({"stage": os.environ.get("RAGLOOP_STAGE", ""), "pid": os.getpid(), "chunks": chunks,
                                 "texts": len(texts), "seconds": round(time.monotonic() - t, 4)}) + "\n")
        return out

    SentenceTransformer.encode = _counted
