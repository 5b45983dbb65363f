"""Program sources we make ourselves, for execution-trace data.

  generate.py     `generate_programs(seed, n)`: synthetic CruxEval-style records
                  {id, code, input} from a typed template grammar (seeded, offline)
  filter.py       `filter_programs(records)`: keep those that trace ok, quickly and
                  deterministically; counts of the dropped by reason; the CLI
  repo_traces.py  `trace_repo(files, ...)`: run a repository's tests under the tracer
                  and cut function-level traces (max depth, seeded step-in probability)
"""
