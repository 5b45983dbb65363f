"""Large data-generation jobs writing ArrayRecord shards (+ JSONL copies and manifests).

  traces.py   program sources -> sandboxed tracer -> trace-record shards; the CLI
  sources.py  `--source` specs (cruxeval:PATH, jsonl:PATH, synthetic:SEED:N) -> requests
  shards.py   shard naming, index-range assignment, atomic writes, read-back
"""
